"""Matrix-free linear algebra on symmetric operators: eigensolvers, trace, spectral density."""
