"""The synthetic benchmark lab: rows, training with timing, baselines, diagnostics, reports, runner.

``benchmarks/run_synthetic.py`` is the command. The profiles and the config they give live in
the package (``ovs3d_nerfstudio.synthetic.profiles``) because ``ovs3d-demo`` trains with them.

* ``methods``: the rows of the table (2D baselines and trained methods);
* ``training``: nerfstudio's Trainer with per-iteration timing and losses, the shared
  reconstruction, learning curves;
* ``evaluation``: the 2D teacher baselines, scored like a trained row;
* ``diagnostics``: where a trained row loses the teacher's label information;
* ``reports``: machine, code version, load, JSON and the plain-text table;
* ``runner``: one scene, a profile and the requested rows.
"""
