"""Machinery shared by the preprocessing commands in ``dataset/voxceleb1`` and ``dataset/voxceleb2``.

- ``videos``: finding the videos of a VoxCeleb-style tree and reading evenly spaced frames from them.
- ``runner``: ``--workers``, ``--shard``, per-video failure records and the run summary.
- ``output``: atomic files and per-video folders (what makes every command resumable).
- ``faces``: following a video's main face through its frames and cropping it.
"""
