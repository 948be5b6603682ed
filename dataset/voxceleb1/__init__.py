"""VoxCeleb1 preprocessing commands, and the landmark step that writes the training store for both datasets.

    python dataset/voxceleb1/sample_frame.py --root VOX1/frames --out FRAMES --frames-per-video 32
    python dataset/voxceleb1/extract_landmark.py --root FRAMES --out STORE --backend face_alignment --device cuda

Every command takes ``--workers N``, ``--shard i/n`` and is resumable; see ``dataset/pipeline/``. The store
format and its torch Datasets are in ``dataset/store.py``.
"""
