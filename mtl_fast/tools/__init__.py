"""Applications built on the library: the ``mtl-fast`` command line, benchmarks, training
experiments, the offline dataset and backend verification. The library never imports them."""
