"""mdxrd: physics-based powder XRD training data from CHGNet molecular dynamics.

Stages, one job per shard of crystals, each one module and one rule file of the same name:
``relax`` (structure, 0 K reference), ``md`` (runs, batched in lockstep by ``batch``), ``post``
(snapshots, ``xrd``, averages), ``qc`` (checks and report figures), ``dataset`` (Parquet parts).
``config`` validates, ``grid`` builds units, runs and shards, ``params`` writes each job's
parameters; ``mdxrd.cli`` is the command-line interface.
"""

__version__ = "0.1.0"

#: CHGNet model version the calculators load (``CHGNet.load(model_name=...)``), recorded in datasets.
CHGNET_MODEL = "0.3.0"
