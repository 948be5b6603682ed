"""VoxCeleb2 preprocessing commands (videos as ``idNNNNN/VIDEO_ID/NNNNN.mp4`` clips).

    python dataset/voxceleb2/clean_data.py --root VOX2/dev/mp4 --report clean.json [--quarantine DIR]
    python dataset/voxceleb2/extract_frames.py --root VOX2/dev/mp4 --out FRAMES --frames-per-video 32

then ``dataset/voxceleb1/extract_landmark.py`` on FRAMES (or on the clips directly) writes the training store.
Every command takes ``--workers N``, ``--shard i/n`` and is resumable; see ``dataset/pipeline/``.
"""
