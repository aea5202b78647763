"""Offline benchmarks: datasets, recall, timing harness, peer adapters, reports (``quiver bench``).

Submodules import their heavy dependencies (h5py, matplotlib, faiss...) only when used."""
