"""Everything that turns videos into training samples: landmarks, preprocessing, the training dataset, demo data.

:mod:`dataset.landmarks` holds the 68-point landmark layer (detectors, landmark images, flips, crops) and
:mod:`dataset.demo` builds a small built-in talking-head dataset from real photos that installed packages ship.
"""
