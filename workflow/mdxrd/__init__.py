"""mdxrd: physics-based powder XRD training data from CHGNet molecular dynamics.

Stages (one module or package each, one Snakemake rule file each): ``structure``,
``reference``, ``md``, ``snapshots``, ``xrd`` (kernel, instrument profiles, stage, CLI),
``qc``, ``plots``, ``dataset``. ``mdxrd.cli`` is the command-line interface.
"""

__version__ = "0.1.0"

#: CHGNet model version the calculators load (``CHGNet.load(model_name=...)``), recorded in datasets.
CHGNET_MODEL = "0.3.0"
