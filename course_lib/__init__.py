"""course_lib: the JAX/Flax kernels behind the Generative AI with JAX course.

Core: :mod:`~course_lib.runtime` (backend and scale), :mod:`~course_lib.data` (offline
datasets), :mod:`~course_lib.train` (training loop, checkpoints). One module per topic, named
as the syllabus names it: ``prob``, ``gmm``, ``hmm``, ``ar``, ``nets``, ``gan``, ``vae``,
``gpt``, ``metrics``. Import the one a notebook needs: ``from course_lib import gmm``.
"""
__version__ = "0.1.0"
