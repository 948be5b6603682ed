"""HeadGAN's 3D face representation: dense face meshes, their fit into identity / expression / pose, NMFC renders.

HeadGAN (Doukas et al. 2021, Sec. 3.1) conditions its generator on a rendered 3D face instead of sparse
landmarks: a face model is fitted to every frame, the identity is averaged over the video, expression and pose
are per frame, and the face is drawn with every vertex coloured by its position in the mean face normalised to
[0, 1] (the NMFC image). Cross-person driving puts the driver's expression and motion on the person's identity.

    python -m dataset.face3d.extract_mesh STORE          # face3d.npz into every video folder of a store

    from dataset.face3d.fit import read_face3d, transfer
    from dataset.face3d.render import render_nmfc
    fit = read_face3d(store_root / entry["path"])        # FaceFit: identity, expression, scale, rotation, ...
    nmfc = render_nmfc(fit.vertices([t])[0], 256)        # 256x256x3 uint8 conditioning image of frame t
    driven = transfer(person_fit, driver_fit)            # (N_driver, 468, 3) pixel meshes of the person

Modules:

* ``backends.py``: ``MeshDetector`` and the offline CPU backend, MediaPipe Face Mesh (468 vertices; 3.2-3.4 ms
  a frame at 32x32 to 256x256 on one core of the 2-core development machine, and it still finds the faces of
  32x32 crops). MediaPipe is imported only when a detector first runs.
* ``mesh.py``: the ``mediapipe468`` topology and mean face, the committed asset ``face_mesh.npz`` (852
  triangles, 14 KB) and its rebuild command ``python -m dataset.face3d.mesh --rebuild``.
* ``fit.py``: ``fit_video`` / ``fit_single`` (similarity alignment on the rigid vertices), ``FaceFit``,
  ``transfer`` and the ``face3d.npz`` storage (about 3 KB a frame).
* ``render.py``: a vectorised NumPy z-buffer rasteriser and ``render_nmfc``; one 256x256 NMFC render of the
  852-triangle mesh takes about 5 ms on one core (minimum of repeated runs; 8 ms median on a busy machine).
* ``extract_mesh.py``: the resumable, shardable preprocessing command over a store.

Nothing here runs at import time, and the training data loader only reads ``face3d.npz`` and renders.
"""
