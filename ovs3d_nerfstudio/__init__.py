"""3D-OVS open-vocabulary segmentation as a nerfstudio method.

Importing the package changes nothing in the process: nerfstudio imports every plugin for
every ``ns-*`` command. What our commands need is set up when they run (``process.py``).
"""
