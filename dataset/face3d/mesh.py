"""The face mesh topology and the mean face behind NMFC renders: ``dataset/face3d/face_mesh.npz``.

HeadGAN (Doukas et al. 2021, Sec. 3.1) colours every vertex of the fitted 3D face by its position in the mean
face, normalised to [0, 1] per axis (the normalised mean face coordinates, NMFC). This module holds what that
needs for the ``"mediapipe468"`` topology of ``backends.MediaPipeMeshDetector``, as a small asset committed to
the repository (14 KB):

* ``triangles()``: int64 (F, 3). MediaPipe ships only the edge set of its tessellation
  (``face_mesh_connections.FACEMESH_TESSELATION``: 2556 directed pairs, 1322 distinct edges). Its triangles are
  the 3-cliques of that graph (854) less the two "separating" 3-cycles beside the nostrils whose three edges are
  each shared by three cliques: 852 triangles, every edge in at most two. That makes a disc with three holes
  (Euler characteristic 468 - 1322 + 852 = -2): the outer contour (36 boundary vertices), the two eye openings
  (16 each) and the mouth opening (20). 852 = 898 - 46, where 46 = 14 + 14 + 18 triangles would fill those
  three openings with fans, matching the 898 often quoted for MediaPipe's canonical face model. The openings
  are kept: an open mouth or eye then shows as background in the render, which is exactly what the generator
  should see. Triangles are oriented consistently; their normals ``(p1 - p0) x (p2 - p0)`` point towards the
  camera (-z) on the mean face.
* ``mean_face()``: float32 (V, 3) in the canonical frame: x right, y down, z away from the camera (the pixel
  axes of a frontal face), centred at the vertex mean, scaled to an RMS distance of 1 from the centre, and
  mirror-symmetric about x = 0.
* ``nmfc_colours()``: the mean face normalised to [0, 1] per axis, the NMFC colour of every vertex.
* ``mirror_permutation()``, ``stable_vertices()``, ``region(name)``: the vertex that mirrors each vertex, the
  rigid vertices used to estimate head pose (``fit.py``), and the boundary loops (``"contour"``,
  ``"right_eye"``, ``"left_eye"``, ``"mouth"``; right/left are the subject's, as in ``dataset/landmarks.py``).

Rebuilding the asset (needs MediaPipe; deterministic for a given wheel)::

    python -m dataset.face3d.mesh --rebuild

detects the mesh on the two real photos that installed packages ship (``dataset.demo.load_source_photos``:
skimage's astronaut and matplotlib's Grace Hopper), normalises each (centre, RMS scale), rotates the second
onto the first (Procrustes), averages them, finds the mirror permutation (optimal assignment of the mirrored
face to itself, accepted only if it maps the tessellation onto itself), rotates the face so that its symmetry
plane is x = 0 with y as close to the image's down direction as that allows, and symmetrises it. Two faces
make a plausible but not a statistical mean face; NMFC only needs a fixed, smooth colouring of the vertices.
"""
from __future__ import annotations

import argparse
import functools
import itertools
from collections import defaultdict
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

TOPOLOGY = "mediapipe468"
NUM_VERTICES = 468
ASSET_PATH = Path(__file__).with_name("face_mesh.npz")
REBUILD_COMMAND = "python -m dataset.face3d.mesh --rebuild"
REGIONS = ("contour", "right_eye", "left_eye", "mouth")
_ASSET_KEYS = ("topology", "triangles", "mean_face", "mirror", "stable", "sources",
               *(f"region_{name}" for name in REGIONS))


class MeshAssetError(RuntimeError):
    """The committed face mesh asset is missing or does not hold what this code expects."""


# ----------------------------------------------------------------------------------------------------------------
# Reading the asset
# ----------------------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def _asset(path: Path = ASSET_PATH) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise MeshAssetError(f"the face mesh asset {path} is missing; rebuild it with: {REBUILD_COMMAND}")
    with np.load(path, allow_pickle=False) as data:
        asset = {key: data[key] for key in data.files}
    missing = [key for key in _ASSET_KEYS if key not in asset]
    if missing or str(asset["topology"]) != TOPOLOGY or asset["mean_face"].shape != (NUM_VERTICES, 3):
        raise MeshAssetError(f"{path} is not a {TOPOLOGY} face mesh asset (missing {missing}); "
                             f"rebuild it with: {REBUILD_COMMAND}")
    asset["triangles"] = asset["triangles"].astype(np.int64)
    asset["mean_face"] = asset["mean_face"].astype(np.float32)
    mean = asset["mean_face"]
    low, high = mean.min(axis=0), mean.max(axis=0)
    asset["nmfc"] = ((mean - low) / (high - low)).astype(np.float32)
    for key in ("mirror", "stable", *(f"region_{name}" for name in REGIONS)):
        asset[key] = asset[key].astype(np.int64)
    for array in asset.values():
        array.setflags(write=False)
    return asset


def triangles() -> np.ndarray:
    """int64 (F, 3) vertex indices of the mesh's triangles, consistently oriented (read-only, cached)."""
    return _asset()["triangles"]


def mean_face() -> np.ndarray:
    """float32 (V, 3) mean face in the canonical frame (x right, y down, z away; centred, RMS radius 1)."""
    return _asset()["mean_face"]


def nmfc_colours() -> np.ndarray:
    """float32 (V, 3) in [0, 1]: the mean face normalised per axis, the NMFC colour (R=x, G=y, B=z) of a vertex."""
    return _asset()["nmfc"]


def mirror_permutation() -> np.ndarray:
    """int64 (V,): ``mirror[i]`` is the vertex at vertex i's mirror position (an involution).

    A mesh of the horizontally flipped image is ``flipped[mirror]`` with x mapped to ``width - 1 - x``.
    """
    return _asset()["mirror"]


def stable_vertices() -> np.ndarray:
    """int64 indices of the vertices that move rigidly with the head: nose, upper cheeks, between the eyes.

    Chosen on the mean face: between the eye openings' top and the mouth opening's top, away from the eyelids
    and the outer contour, so that neither talking, blinking nor raised brows move them.
    """
    return _asset()["stable"]


def region(name: str) -> np.ndarray:
    """int64 vertex indices of a boundary loop, in order around it: one of ``REGIONS``."""
    if name not in REGIONS:
        raise ValueError(f"unknown face mesh region {name!r}; valid regions: {', '.join(REGIONS)}")
    return _asset()[f"region_{name}"]


# ----------------------------------------------------------------------------------------------------------------
# Building the asset
# ----------------------------------------------------------------------------------------------------------------


def triangles_from_edges(edges: Iterable[tuple[int, int]]) -> np.ndarray:
    """The triangles of a triangulated surface given only its edges, unoriented, sorted, int64 (F, 3).

    Triangles are the 3-cliques of the edge graph, less separating 3-cycles: a clique all of whose edges lie in
    three or more cliques is a cycle around a vertex or a tunnel, not a face. The result must be a manifold
    (each edge in at most two triangles), else a ``ValueError`` says which edges are not.
    """
    neighbours: dict[int, set[int]] = defaultdict(set)
    for a, b in edges:
        if a != b:
            neighbours[int(a)].add(int(b))
            neighbours[int(b)].add(int(a))
    cliques = {tuple(sorted((a, b, c))) for a in neighbours for b in neighbours[a] if b > a
               for c in neighbours[a] & neighbours[b] if c > b}
    edge_use: dict[tuple[int, int], int] = defaultdict(int)
    for clique in cliques:
        for edge in itertools.combinations(clique, 2):
            edge_use[edge] += 1
    faces = sorted(c for c in cliques if not all(edge_use[e] >= 3 for e in itertools.combinations(c, 2)))
    edge_use = defaultdict(int)
    for face in faces:
        for edge in itertools.combinations(face, 2):
            edge_use[edge] += 1
    bad = [edge for edge, count in edge_use.items() if count > 2]
    if bad:
        raise ValueError(f"the edges do not form a manifold triangulation: edges {bad[:5]} lie in 3+ triangles")
    return np.array(faces, np.int64).reshape(-1, 3)


def orient_triangles(faces: np.ndarray, vertices: np.ndarray) -> np.ndarray:
    """``faces`` reordered so that neighbours traverse their shared edge in opposite directions, with normals
    ``(p1 - p0) x (p2 - p0)`` pointing to -z (the camera) on most of the area of ``vertices``.

    Orientation spreads from a seed triangle over shared edges; a ``ValueError`` reports a non-orientable mesh.
    """
    faces = np.array(faces, np.int64).copy()
    by_edge: dict[tuple[int, int], list[int]] = defaultdict(list)
    for index, face in enumerate(faces):
        for a, b in ((0, 1), (1, 2), (2, 0)):
            by_edge[tuple(sorted((face[a], face[b])))].append(index)
    done = np.zeros(len(faces), bool)
    for seed in range(len(faces)):
        if done[seed]:
            continue
        done[seed] = True
        stack = [seed]
        while stack:
            index = stack.pop()
            face = faces[index]
            for a, b in ((face[0], face[1]), (face[1], face[2]), (face[2], face[0])):
                for other in by_edge[tuple(sorted((a, b)))]:
                    if other == index:
                        continue
                    directed = {(faces[other][i], faces[other][(i + 1) % 3]) for i in range(3)}
                    agrees = (b, a) in directed               # a consistent neighbour runs the edge as b -> a
                    if done[other]:
                        if not agrees:
                            raise ValueError(f"the mesh is not orientable (triangles {index} and {other})")
                        continue
                    if not agrees:
                        faces[other] = faces[other][::-1]
                    done[other] = True
                    stack.append(other)
    corners = np.asarray(vertices, np.float64)[faces]
    normals = np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0])
    if normals[:, 2].sum() > 0:                               # the z component is twice the signed area
        faces = faces[:, ::-1].copy()
    return faces


def boundary_loops(faces: np.ndarray) -> list[np.ndarray]:
    """The closed loops of boundary edges (edges of one triangle), each as ordered vertex indices."""
    edge_use: dict[tuple[int, int], int] = defaultdict(int)
    for face in np.asarray(faces):
        for a, b in ((face[0], face[1]), (face[1], face[2]), (face[2], face[0])):
            edge_use[tuple(sorted((int(a), int(b))))] += 1
    neighbours: dict[int, list[int]] = defaultdict(list)
    for (a, b), count in edge_use.items():
        if count == 1:
            neighbours[a].append(b)
            neighbours[b].append(a)
    if any(len(n) != 2 for n in neighbours.values()):
        raise ValueError("the boundary is not a set of simple loops (a vertex touches more than two boundary edges)")
    loops, seen = [], set()
    for start in sorted(neighbours):
        if start in seen:
            continue
        loop, previous, current = [start], None, start
        seen.add(start)
        while True:
            following = [v for v in neighbours[current] if v != previous][0]
            if following == start:
                break
            loop.append(following)
            seen.add(following)
            previous, current = current, following
        loops.append(np.array(loop, np.int64))
    return loops


def _normalise(points: np.ndarray) -> np.ndarray:
    centred = points - points.mean(axis=0)
    return centred / np.sqrt((centred ** 2).sum(axis=1).mean())


def _rotation_onto(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Proper rotation R minimising ||source @ R.T - target|| (both centred; Kabsch)."""
    u, _, vt = np.linalg.svd(target.T @ source)
    d = np.sign(np.linalg.det(u @ vt))
    return u @ np.diag([1.0, 1.0, d]) @ vt


def find_mirror_permutation(face: np.ndarray, faces: np.ndarray, iterations: int = 5) -> np.ndarray:
    """The vertex permutation that maps ``face`` onto its mirror image, from geometry, checked by topology.

    The face is mirrored in x, and every vertex is assigned its nearest mirrored vertex by an optimal one-to-one
    assignment; the mirrored face is then rotated onto the face through that assignment, and the assignment
    redone, a few times. The answer must be an involution and map the mesh's edges onto its edges, up to a few
    quads split along the other diagonal: MediaPipe's tessellation is not exactly symmetric (6 of its 1322 edges
    have no mirror edge), so up to 1% of the edges may differ, else ``ValueError``.
    """
    from scipy.optimize import linear_sum_assignment
    from scipy.spatial.distance import cdist

    face = _normalise(np.asarray(face, np.float64))
    mirrored = face * np.array([-1.0, 1.0, 1.0])
    aligned = mirrored                                        # a roughly frontal face mirrors onto itself
    for _ in range(iterations):
        _, permutation = linear_sum_assignment(cdist(face, aligned, "sqeuclidean"))
        aligned = mirrored @ _rotation_onto(mirrored[permutation], face).T
    if not np.array_equal(permutation[permutation], np.arange(len(face))):
        raise ValueError("the mirror assignment is not an involution; the face is too asymmetric to derive it")
    edges = {tuple(sorted(pair)) for f in np.asarray(faces).tolist()
             for pair in itertools.combinations(f, 2)}
    mirrored_edges = {tuple(sorted((int(permutation[a]), int(permutation[b])))) for a, b in edges}
    if len(mirrored_edges - edges) > 0.01 * len(edges):
        raise ValueError(f"the mirror assignment does not map the mesh onto itself "
                         f"({len(mirrored_edges - edges)} of {len(edges)} edges differ)")
    return permutation.astype(np.int64)


def canonical_mean_face(meshes: Sequence[np.ndarray], faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The symmetric mean face in the canonical frame and the mirror permutation, from pixel-coordinate meshes.

    Each mesh is centred and scaled to RMS radius 1, rotated onto the first one, and averaged. The mirror pairs
    ``(i, mirror[i])`` differ by a vector along the face's left-right axis; their principal direction becomes
    x (pointing to the image's right), y is the image's down direction made orthogonal to it, z = x cross y.
    The face is then averaged with its mirror image and normalised again.
    """
    normalised = [_normalise(np.asarray(m, np.float64)) for m in meshes]
    reference = normalised[0]
    mean = np.mean([m @ _rotation_onto(m, reference).T for m in normalised], axis=0)
    mirror = find_mirror_permutation(mean, faces)
    paired = mirror != np.arange(len(mean))
    differences = (mean - mean[mirror])[paired]
    differences *= np.sign(differences[:, 0:1] + 1e-12)      # each pair once, pointing to the image's right
    x_axis = np.linalg.svd(differences, full_matrices=False)[2][0]
    x_axis *= np.sign(x_axis[0])
    y_axis = np.array([0.0, 1.0, 0.0]) - x_axis[1] * x_axis
    y_axis /= np.linalg.norm(y_axis)
    rotation = np.stack([x_axis, y_axis, np.cross(x_axis, y_axis)])
    canonical = mean @ rotation.T
    symmetric = 0.5 * (canonical + canonical[mirror] * np.array([-1.0, 1.0, 1.0]))
    return _normalise(symmetric), mirror


def find_stable_vertices(face: np.ndarray, loops: dict[str, np.ndarray]) -> np.ndarray:
    """Vertices of the rigid upper-middle face: see ``stable_vertices``; ``loops`` as ``region`` names them.

    The band runs from the top of the eye openings to a little above the mouth opening; vertices nearer than
    half an eye opening's width to an eye opening (the lids) or nearer than 0.1 to the outer contour are left out.
    """
    face = np.asarray(face, np.float64)
    eyes = np.concatenate([loops["right_eye"], loops["left_eye"]])
    eye_width = np.ptp(face[loops["right_eye"], 0])
    top = face[eyes, 1].min()
    bottom = face[loops["mouth"], 1].min() - 0.5 * eye_width
    from scipy.spatial.distance import cdist

    near_eyes = cdist(face, face[eyes]).min(axis=1) < 0.5 * eye_width
    near_contour = cdist(face, face[loops["contour"]]).min(axis=1) < 0.1
    keep = (face[:, 1] >= top) & (face[:, 1] <= bottom) & ~near_eyes & ~near_contour
    return np.flatnonzero(keep).astype(np.int64)


def name_loops(face: np.ndarray, loops: list[np.ndarray]) -> dict[str, np.ndarray]:
    """Names the four boundary loops of the mediapipe468 mesh: the longest is the contour, the lowest of the
    others the mouth, the remaining two the eyes (the subject's right eye has the smaller x)."""
    if len(loops) != 4:
        raise ValueError(f"expected 4 boundary loops (contour, two eyes, mouth), found {len(loops)}")
    loops = sorted(loops, key=len)
    contour, inner = loops[-1], sorted(loops[:-1], key=lambda loop: face[loop, 1].mean())
    mouth = inner[-1]
    right_eye, left_eye = sorted(inner[:2], key=lambda loop: face[loop, 0].mean())
    return {"contour": contour, "right_eye": right_eye, "left_eye": left_eye, "mouth": mouth}


def build_asset(meshes: Sequence[np.ndarray], edges: Iterable[tuple[int, int]],
                sources: Sequence[str]) -> dict[str, np.ndarray]:
    """Everything ``face_mesh.npz`` holds, from detected pixel-coordinate meshes and the tessellation edges."""
    unoriented = triangles_from_edges(edges)
    mean, mirror = canonical_mean_face(meshes, unoriented)
    faces = orient_triangles(unoriented, mean)
    loops = name_loops(mean, boundary_loops(faces))
    return {
        "topology": np.array(TOPOLOGY),
        "triangles": faces.astype(np.int16),
        "mean_face": mean.astype(np.float32),
        "mirror": mirror.astype(np.int16),
        "stable": find_stable_vertices(mean, loops).astype(np.int16),
        "sources": np.array(list(sources)),
        **{f"region_{name}": loop.astype(np.int16) for name, loop in loops.items()},
    }


def detect_source_meshes() -> tuple[list[np.ndarray], list[str]]:
    """MediaPipe meshes of the two source photos (``dataset.demo.load_source_photos``), and their names."""
    from dataset.demo import load_source_photos
    from dataset.face3d.backends import MediaPipeMeshDetector

    photos = load_source_photos()
    meshes = MediaPipeMeshDetector().detect(list(photos.values()))
    for name, mesh in zip(photos, meshes):
        if mesh is None:
            raise RuntimeError(f"MediaPipe found no face on the {name} photo")
    return meshes, list(photos)


def tessellation_edges() -> list[tuple[int, int]]:
    """MediaPipe's ``FACEMESH_TESSELATION`` edges (imports MediaPipe)."""
    from dataset.face3d.backends import DetectorLoadError, MEDIAPIPE_INSTALL

    try:
        from mediapipe.python.solutions.face_mesh_connections import FACEMESH_TESSELATION
    except ImportError as error:
        raise DetectorLoadError(f"rebuilding the face mesh asset needs MediaPipe: {MEDIAPIPE_INSTALL}") from error
    return sorted(FACEMESH_TESSELATION)


def rebuild(path: Path = ASSET_PATH) -> dict[str, np.ndarray]:
    """Writes the asset to ``path`` (atomically) from MediaPipe on the source photos; returns its arrays."""
    from utils.atomic import atomic_file

    meshes, sources = detect_source_meshes()
    asset = build_asset(meshes, tessellation_edges(), sources)
    with atomic_file(path, "wb") as f:
        np.savez(f, **asset)
    path.chmod(0o644)                                         # a committed file, not a private temporary one
    _asset.cache_clear()
    return asset


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m dataset.face3d.mesh", description=__doc__.split("\n")[0])
    parser.add_argument("--rebuild", action="store_true",
                        help=f"rewrite {ASSET_PATH.name} from MediaPipe on the two source photos")
    parser.add_argument("--out", type=Path, default=ASSET_PATH, help="where --rebuild writes (default: the asset)")
    args = parser.parse_args(argv)
    if args.rebuild:
        rebuild(args.out)
    asset = _asset(args.out)
    mean = asset["mean_face"]
    print(f"{args.out} ({args.out.stat().st_size / 1024:.1f} KB): topology {asset['topology']}, "
          f"{len(mean)} vertices, {len(asset['triangles'])} triangles, {len(asset['stable'])} stable vertices, "
          f"{int((asset['mirror'] == np.arange(len(mean))).sum())} on the symmetry plane; "
          f"mean face extent x {np.ptp(mean[:, 0]):.3f}, y {np.ptp(mean[:, 1]):.3f}, z {np.ptp(mean[:, 2]):.3f}; "
          f"from {', '.join(asset['sources'].tolist())}")


if __name__ == "__main__":
    main()
