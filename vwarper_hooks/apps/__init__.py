"""Applications built on the library: the ``vwarper`` command line (`cli`), pipeline loading, one
injected generation (`generate`), the offline demo, pictures (`visualize`), the paper's metrics
(`evaluation`), the correspondence analysis (`analysis`) and the sharded benchmark runner
(`benchmark`). Nothing outside this package imports it."""
