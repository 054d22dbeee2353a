"""`sharp spectrum` and checkpoint measurements: settings (torch-free, for a fast CLI), the
problem a Hessian is taken of, the computations, the PyHessian cross-check, and the loop
over checkpoints that writes spectrum.csv."""
