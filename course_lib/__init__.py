"""course_lib: the JAX/Flax kernels behind the Generative AI with JAX course.

Core: :mod:`~course_lib.runtime` (backend and scale), :mod:`~course_lib.data` (offline
datasets), :mod:`~course_lib.train` (training loops, checkpoints). One module per topic, named
as the syllabus names it: ``prob``, ``gmm``, ``hmm``, ``ar`` (AR(p) time series), ``ngram``
(n-gram and neural bigram language models), ``nets``, then ``gan``, ``vae``, ``gpt``,
``metrics``. Import the one a notebook needs: ``from course_lib import gmm``. Topic modules
never import each other.

Conventions, the same in every module:

- **Argument order**: ``key`` first for anything random; then the model or its parameters
  (``params``, ``model``, ``fit``, ``mean, cov``); then the data (``x``, ``obs``, ``y``,
  ``windows``, ``tokens``, ``labels``); then sizes; every option keyword-only. So
  ``gmm.log_likelihood(params, x)``, ``hmm.sample(key, params, length)``.
- **Counts**: ``n`` samples or draws; ``length`` time steps of a generated sequence; ``steps``
  optimisation steps (and a forecast horizon); ``max_iter`` the cap on EM-type iterations;
  ``n_components``, ``n_restarts``. A temperature is ``temperature``, never ``T``.
- **Tolerances**: an iterative fit stops when the mean log-likelihood per observation (per
  point, per time step) changes by less than ``tol``; ``tol=0`` runs exactly ``max_iter``.
- **Errors**: every public function checks its arguments' values (NaN, probabilities, ranges,
  positive definiteness, ids outside the vocabulary, ``True`` or ``2.7`` given as a count) and
  raises ``ValueError`` naming the argument. Results are NamedTuples; each module lists its
  public names in ``__all__``.
"""
__version__ = "0.1.0"
