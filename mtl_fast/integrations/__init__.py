"""Adapters that let other libraries use mtl_fast's kernels (each needs its library installed;
``import mtl_fast`` imports none of them)."""
