"""Running the examples' shell scripts in tests at the cost of their computations only.

A script calls `sharp` a dozen times, and each new Python process spends seconds importing
torch on a small machine. Here one server process imports sharpcli, torch and pandas once;
the `sharp` on the script's PATH is a stub (a Python without `site`, started in
milliseconds) that hands its argument list, working directory, environment and its own
stdin, stdout and stderr (the file descriptors themselves, over a Unix socket) to the
server, which forks a child that runs `sharpcli.cli.main` with them and returns its exit
code. Commands still run one after another, each in its own process, with the script's
redirections: only the import is shared.

    with sharp_server(tmp_path) as env:
        subprocess.run(["bash", script], env=env, ...)
"""

from __future__ import annotations

import json
import os
import socket
import socketserver
import subprocess
import sys
import tempfile
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from pathlib import Path

_STUB = """#!{python} -SE
import json, os, socket, sys
s = socket.socket(socket.AF_UNIX)
s.connect({path!r})
msg = json.dumps({{"argv": sys.argv[1:], "cwd": os.getcwd(), "env": dict(os.environ)}}).encode()
socket.send_fds(s, [len(msg).to_bytes(8, "big") + msg], [0, 1, 2])
sys.exit(int(s.recv(16) or b"1"))
"""


class _Handler(socketserver.BaseRequestHandler):
    def handle(self) -> None:  # in a child forked for this command
        data, fds, _, _ = socket.recv_fds(self.request, 1 << 16, 3)
        size, data = int.from_bytes(data[:8], "big"), data[8:]
        while len(data) < size:
            data += self.request.recv(size - len(data))
        msg = json.loads(data)
        for fd, target in zip(fds, (0, 1, 2)):
            os.dup2(fd, target)
        os.chdir(msg["cwd"])
        os.environ.clear()
        os.environ.update(msg["env"])
        from sharpcli.cli import main

        try:
            main(msg["argv"])
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        except BaseException:  # a bug: its traceback on the command's stderr
            import traceback

            traceback.print_exc()
            code = 1
        sys.stdout.flush()
        sys.stderr.flush()
        self.request.sendall(str(code).encode())


class _Server(socketserver.ForkingMixIn, socketserver.UnixStreamServer):
    pass


def serve(path: str) -> None:
    """Import what `sharp` commands use, listen on `path`, say "ready", fork per command."""
    sys.path[:] = [os.path.abspath(p or os.curdir) for p in sys.path]  # children chdir
    from sharpcli.cli import main

    # Warm up: what the first command would import or initialise lazily, each child would
    # again. A one-step run of a small CNN, its summary and its verdict do it all once here.
    with tempfile.TemporaryDirectory() as tmp:
        for argv in (["train", "--dataset", "digits", "--model", "cnn", "--width", "2",
                      "--train-size", "32", "--steps", "1", "--quiet", "--reports-dir", tmp,
                      "--checkpoints-dir", tmp, "--run-name", "warm-up"],
                     ["summarize", tmp, "--out", os.path.join(tmp, "summary.csv")],
                     ["eos", os.path.join(tmp, "warm-up"), "--out", os.path.join(tmp, "eos.csv")]):
            with open(os.devnull, "w") as null, redirect_stdout(null), redirect_stderr(null):
                try:
                    main(argv)
                except SystemExit:
                    pass

    with _Server(path, _Handler) as server:
        print("ready", flush=True)
        server.serve_forever()


@contextmanager
def sharp_server(root: Path):
    """The environment of a script whose `sharp` is the server's stub (under root/bin)."""
    root = Path(root)
    (root / "bin").mkdir(parents=True, exist_ok=True)
    path = str(root / "sharp.sock")  # AF_UNIX paths are short: keep root short too
    stub = root / "bin" / "sharp"
    stub.write_text(_STUB.format(python=sys.executable, path=path))
    stub.chmod(0o755)
    env = dict(os.environ, PATH=f"{root / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
               OMP_NUM_THREADS="1")
    server = subprocess.Popen([sys.executable, "-c", f"from tests.script_server import serve; "
                               f"serve({path!r})"], env=env, stdout=subprocess.PIPE, text=True,
                              cwd=Path(__file__).resolve().parent.parent)
    try:
        assert server.stdout.readline().strip() == "ready"
        yield env
    finally:
        server.terminate()
        server.wait(timeout=30)
