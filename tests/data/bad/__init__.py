"""Small broken and awkward inputs, generated at test time (nothing binary is committed).

See `tests.data.bad.images` (image files) and `tests.data.bad.manifests` (unsafe manifests).
"""
