from sharpcli.cli import main

main()
