"""Model bundles and signing keys, shared by the host tools and the board (no TensorFlow here)."""
