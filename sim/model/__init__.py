"""The model: configs (config), the sparse-coding data (data), the Numba kernels (kernels),
thread-count-independent products (linalg), the symmetric two-layer network (network), the
noise-free path on the sparse codes (sparse) and the engine's tuning knobs (tuning)."""
