"""synthroom: procedural indoor RGB-D frames with exact labels, the embedded default dataset.

A room (3-8 m a side, 2.4-3.2 m high) of floor, ceiling and walls holds furniture built from
axis-aligned boxes (bed, table, chair, sofa, cabinet, desk, bookshelf, ...) and wall-mounted flat
objects (door, window, picture, whiteboard, ...), each labelled with its NYUDv2 40-class id
(0-based). A pinhole camera with Kinect intrinsics (fx 518.8, fy 519.5, cx 325.6, cy 253.7 at
640x480, scaled) is ray-cast against the scene, fully vectorised: each box is only tested on the
pixels inside its projected screen rectangle, which is what makes >= 100 frames/s at 240x320.

Per pixel: z-depth in metres (as a Kinect reports it, distance along the optical axis), class id,
and the surface normal in the camera frame (x right, y down, z forward), stored in the channel order
(x, z, y) that the authors' three-task network predicts. Appearance: overlapping
per-class colour distributions, procedural texture in world coordinates, Lambertian shading from
one or two point lights with 1/(1 + k d^2) falloff, optional sensor noise and Kinect-like depth
holes (0 = invalid). Every frame is a pure function of (seed, index).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

# NYUDv2 40-class ids, 0-based (classMapping40.mat order).
C = dict(wall=0, floor=1, cabinet=2, bed=3, chair=4, sofa=5, table=6, door=7, window=8, bookshelf=9, picture=10,
         counter=11, blinds=12, desk=13, shelves=14, curtain=15, dresser=16, pillow=17, mirror=18, floor_mat=19,
         ceiling=21, books=22, television=24, box=28, whiteboard=29, night_stand=31, lamp=34, otherfurniture=38)

# Mean albedo (RGB 0..1) per class; instance colours are drawn around these with a spread wide
# enough that classes overlap (e.g. a beige wall, a beige sofa and a light wood table).
_ALBEDO = {
    C["wall"]: (0.78, 0.74, 0.66), C["floor"]: (0.55, 0.42, 0.30), C["ceiling"]: (0.85, 0.84, 0.80),
    C["cabinet"]: (0.50, 0.36, 0.24), C["bed"]: (0.70, 0.66, 0.62), C["chair"]: (0.45, 0.32, 0.22),
    C["sofa"]: (0.55, 0.50, 0.45), C["table"]: (0.58, 0.43, 0.28), C["door"]: (0.62, 0.50, 0.36),
    C["window"]: (0.70, 0.80, 0.90), C["bookshelf"]: (0.42, 0.30, 0.20), C["picture"]: (0.50, 0.45, 0.50),
    C["desk"]: (0.56, 0.45, 0.33), C["pillow"]: (0.80, 0.76, 0.70), C["floor_mat"]: (0.60, 0.35, 0.30),
    C["television"]: (0.12, 0.12, 0.14), C["box"]: (0.62, 0.50, 0.34), C["whiteboard"]: (0.92, 0.92, 0.92),
    C["night_stand"]: (0.48, 0.35, 0.25), C["lamp"]: (0.80, 0.75, 0.60), C["dresser"]: (0.52, 0.38, 0.26),
    C["curtain"]: (0.65, 0.58, 0.50), C["counter"]: (0.70, 0.68, 0.64), C["books"]: (0.50, 0.30, 0.30),
}
# (frequency x, y, z in rad/m, amplitude): planks on the floor, book spines on shelves, folds on
# curtains, flat boards and screens, fine weave on fabric.
_TEXTURE = {
    C["wall"]: ((1.5, 1.5, 1.5), 0.03), C["floor"]: ((0.0, 0.0, 14.0), 0.16), C["ceiling"]: ((0.5, 0.5, 0.5), 0.02),
    C["bookshelf"]: ((60.0, 0.0, 60.0), 0.35), C["curtain"]: ((22.0, 0.0, 22.0), 0.22), C["bed"]: ((30.0, 0.0, 3.0), 0.06),
    C["sofa"]: ((9.0, 9.0, 9.0), 0.10), C["table"]: ((12.0, 0.0, 0.0), 0.12), C["desk"]: ((0.0, 0.0, 12.0), 0.12),
    C["cabinet"]: ((0.0, 8.0, 0.0), 0.10), C["door"]: ((0.0, 6.0, 0.0), 0.12), C["window"]: ((8.0, 8.0, 8.0), 0.25),
    C["picture"]: ((35.0, 35.0, 35.0), 0.35), C["whiteboard"]: ((0.5, 0.5, 0.5), 0.01),
    C["television"]: ((0.5, 0.5, 0.5), 0.02), C["box"]: ((3.0, 3.0, 3.0), 0.05), C["floor_mat"]: ((25.0, 0.0, 25.0), 0.2),
    C["pillow"]: ((5.0, 5.0, 5.0), 0.04), C["chair"]: ((20.0, 0.0, 20.0), 0.08), C["lamp"]: ((0.0, 20.0, 0.0), 0.05),
}
_TEX_FREQ = np.full((256, 3), 4.0)
_TEX_AMP = np.full(256, 0.08)
for _c, (_f, _a) in _TEXTURE.items():
    _TEX_FREQ[_c], _TEX_AMP[_c] = _f, _a
KINECT = dict(fx=518.8, fy=519.5, cx=325.6, cy=253.7, w=640, h=480)


@dataclass(frozen=True)
class SynthConfig:
    size: tuple[int, int] = (240, 320)
    noise: bool = True  # RGB sensor noise + depth noise and holes
    min_objects: int = 4
    max_objects: int = 8

    def __post_init__(self):
        h, w = self.size
        if h < 16 or w < 16:
            raise ValueError(f"size={self.size}: at least 16x16")
        if not 0 < self.min_objects <= self.max_objects:
            raise ValueError(f"min_objects/max_objects: need 0 < min <= max, got {self.min_objects}, {self.max_objects}")


# ----------------------------------------------------------------------------------------- scene
def _box(lo, hi, cls, rng, albedo=None):
    base = np.array(_ALBEDO.get(cls, (0.5, 0.5, 0.5)))
    col = albedo if albedo is not None else np.clip(base + rng.normal(0, 0.10, 3), 0.03, 1.0)
    return (np.array(lo, float), np.array(hi, float), cls, col)


def _footprint_free(placed, x0, z0, x1, z1, margin=0.05):
    return all(x1 + margin <= a or b <= x0 - margin or z1 + margin <= c or d <= z0 - margin for a, c, b, d in placed)


def _furniture(kind, x, z, sx, sz, rng):
    """Boxes of one piece of furniture standing on the floor at footprint [x, x+sx] x [z, z+sz]."""
    B, cls = [], C.get(kind, C["otherfurniture"])
    col = np.clip(np.array(_ALBEDO[cls]) + rng.normal(0, 0.10, 3), 0.03, 1)
    if kind in ("table", "desk"):
        h = rng.uniform(0.65, 0.78)
        B.append(_box((x, h - 0.04, z), (x + sx, h, z + sz), cls, rng, col))
        leg = 0.05
        if kind == "table":
            for lx, lz in ((x, z), (x + sx - leg, z), (x, z + sz - leg), (x + sx - leg, z + sz - leg)):
                B.append(_box((lx, 0, lz), (lx + leg, h - 0.04, lz + leg), cls, rng, col))
        else:
            B.append(_box((x, 0, z), (x + 0.04, h - 0.04, z + sz), cls, rng, col))
            B.append(_box((x + sx - 0.04, 0, z), (x + sx, h - 0.04, z + sz), cls, rng, col))
    elif kind == "chair":
        h = rng.uniform(0.42, 0.48)
        B.append(_box((x, h - 0.05, z), (x + sx, h, z + sz), cls, rng, col))
        B.append(_box((x, h, z + sz - 0.05), (x + sx, h + rng.uniform(0.35, 0.5), z + sz), cls, rng, col))
        for lx, lz in ((x, z), (x + sx - 0.04, z), (x, z + sz - 0.04), (x + sx - 0.04, z + sz - 0.04)):
            B.append(_box((lx, 0, lz), (lx + 0.04, h - 0.05, lz + 0.04), cls, rng, col))
    elif kind == "sofa":
        h = rng.uniform(0.38, 0.48)
        B.append(_box((x, 0, z), (x + sx, h, z + sz), cls, rng, col))
        B.append(_box((x, h, z + sz - 0.2), (x + sx, h + 0.4, z + sz), cls, rng, col))
        B.append(_box((x, h, z), (x + 0.18, h + 0.2, z + sz - 0.2), cls, rng, col))
        B.append(_box((x + sx - 0.18, h, z), (x + sx, h + 0.2, z + sz - 0.2), cls, rng, col))
    elif kind == "bed":
        h = rng.uniform(0.45, 0.6)
        B.append(_box((x, 0, z), (x + sx, h, z + sz), cls, rng, col))
        B.append(_box((x, 0, z + sz - 0.06), (x + sx, h + rng.uniform(0.4, 0.7), z + sz), cls, rng, col))
        pw = min(0.6, sx / 2 - 0.05)
        for px in (x + 0.05, x + sx - 0.05 - pw):
            B.append(_box((px, h, z + sz - 0.45), (px + pw, h + 0.14, z + sz - 0.08), C["pillow"], rng))
    elif kind == "lamp":
        ph = rng.uniform(1.2, 1.7)
        cx, cz = x + sx / 2, z + sz / 2
        B.append(_box((cx - 0.02, 0, cz - 0.02), (cx + 0.02, ph, cz + 0.02), cls, rng, col))
        B.append(_box((x, ph, z), (x + sx, ph + 0.3, z + sz), cls, rng, col))
    elif kind == "floor_mat":
        B.append(_box((x, 0, z), (x + sx, 0.012, z + sz), cls, rng, col))
    else:  # cabinet, bookshelf, box: a box
        h = {"cabinet": (0.8, 1.2), "bookshelf": (1.5, 2.1), "box": (0.2, 0.5)}[kind]
        top = rng.uniform(*h)
        B.append(_box((x, 0, z), (x + sx, top, z + sz), cls, rng, col))
    return B


# Furniture that would differ only by size (dresser, night stand, counter vs cabinet) is left out:
# with overlapping colours no image cue could tell them apart, which would measure the
# generator's ambiguity rather than the model. 20 of the 40 classes occur.
_FLOOR_KINDS = ("bed", "table", "chair", "sofa", "cabinet", "desk", "bookshelf", "box", "lamp", "floor_mat")
_FOOT = {"bed": ((1.4, 2.0), (1.9, 2.2)), "table": ((0.8, 1.6), (0.7, 1.0)), "chair": ((0.42, 0.5), (0.42, 0.5)),
         "sofa": ((1.6, 2.4), (0.8, 1.0)), "cabinet": ((0.5, 1.2), (0.4, 0.6)), "desk": ((1.0, 1.6), (0.6, 0.8)),
         "bookshelf": ((0.7, 1.2), (0.3, 0.4)), "box": ((0.3, 0.6), (0.3, 0.5)), "lamp": ((0.3, 0.45), (0.3, 0.45)),
         "floor_mat": ((1.0, 2.0), (0.7, 1.4))}
_WALL_KINDS = (("door", (0.8, 1.0), (2.0, 2.1), 0.0), ("window", (0.9, 1.8), (1.0, 1.4), 0.9),
               ("picture", (0.4, 1.0), (0.3, 0.8), 1.3), ("whiteboard", (1.2, 2.0), (0.9, 1.2), 0.9),
               ("television", (0.9, 1.3), (0.5, 0.75), 1.0), ("curtain", (0.8, 1.6), (1.8, 2.3), 0.3))


def make_scene(rng: np.random.Generator, cfg: SynthConfig):
    W, L, H = rng.uniform(3.0, 8.0), rng.uniform(3.0, 8.0), rng.uniform(2.4, 3.2)
    # Camera: near one wall looking into the room, so most of the room is in view.
    cam = np.array([rng.uniform(0.25, 0.75) * W, rng.uniform(1.0, 1.7), rng.uniform(0.2, 0.6)])
    yaw = rng.uniform(-0.6, 0.6)  # radians about +y; 0 looks along +z
    pitch = rng.uniform(-0.45, 0.08)  # negative looks down
    boxes = []
    placed = [(cam[0] - 0.6, cam[2] - 0.6, cam[0] + 0.6, cam[2] + 0.6)]  # keep-out around the camera
    n = int(rng.integers(cfg.min_objects, cfg.max_objects + 1))
    for _ in range(n):
        kind = _FLOOR_KINDS[int(rng.integers(len(_FLOOR_KINDS)))]
        (a0, a1), (b0, b1) = _FOOT[kind]
        sx, sz = rng.uniform(a0, a1), rng.uniform(b0, b1)
        if rng.random() < 0.5:
            sx, sz = sz, sx  # rotated by 90 degrees
        if sx > W - 0.1 or sz > L - 0.1:
            continue
        for _try in range(8):
            against = rng.random() < 0.6  # furniture likes walls
            x = rng.uniform(0.02, W - sx - 0.02)
            z = (L - sz - 0.02) if against else rng.uniform(0.02, L - sz - 0.02)
            if _footprint_free(placed, x, z, x + sx, z + sz):
                placed.append((x, z, x + sx, z + sz))
                boxes += _furniture(kind, x, z, sx, sz, rng)
                break
    for _ in range(int(rng.integers(1, 5))):  # wall-mounted flat objects
        kind, (w0, w1), (h0, h1), y0 = _WALL_KINDS[int(rng.integers(len(_WALL_KINDS)))]
        w, h = rng.uniform(w0, w1), min(rng.uniform(h0, h1), H - y0 - 0.05)
        t = 0.03
        wall = int(rng.integers(3))  # far wall (z = L), left (x = 0), right (x = W)
        cls = C[kind]
        if wall == 0:
            x = rng.uniform(0.05, max(0.06, W - w - 0.05))
            boxes.append(_box((x, y0, L - t), (x + w, y0 + h, L), cls, rng))
        else:
            z = rng.uniform(0.8, max(0.81, L - w - 0.05))
            x0 = 0.0 if wall == 1 else W - t
            boxes.append(_box((x0, y0, z), (x0 + t, y0 + h, z + w), cls, rng))
    room = dict(W=W, L=L, H=H, wall=np.clip(np.array(_ALBEDO[0]) + rng.normal(0, 0.1, 3), 0.05, 1),
                floor=np.clip(np.array(_ALBEDO[1]) + rng.normal(0, 0.12, 3), 0.05, 1),
                ceiling=np.clip(np.array(_ALBEDO[21]) + rng.normal(0, 0.05, 3), 0.05, 1))
    lights = [np.array([rng.uniform(0.2, 0.8) * W, H - 0.1, rng.uniform(0.2, 0.8) * L]) for _ in range(int(rng.integers(1, 3)))]
    return dict(room=room, boxes=boxes, cam=cam, yaw=yaw, pitch=pitch, lights=lights)


# ------------------------------------------------------------------------------------- rendering
def camera_rays(size, yaw, pitch):
    """World-space ray directions (3, H, W) with z_cam = 1, so the hit distance t is the z-depth."""
    h, w = size
    sx, sy = w / KINECT["w"], h / KINECT["h"]
    fx, fy, cx, cy = KINECT["fx"] * sx, KINECT["fy"] * sy, KINECT["cx"] * sx, KINECT["cy"] * sy
    u = (np.arange(w, dtype=np.float32) + 0.5 - cx) / fx
    v = (np.arange(h, dtype=np.float32) + 0.5 - cy) / fy
    R = rotation(yaw, pitch).astype(np.float32)
    # camera frame: x right, y down, z forward
    d = R[:, 0, None, None] * u[None, None, :] + R[:, 1, None, None] * v[None, :, None] + R[:, 2, None, None]
    return d.astype(np.float32), R, (fx, fy, cx, cy)


def rotation(yaw, pitch):
    """Camera-to-world rotation: columns are the camera's x (right), y (down), z (forward) in world."""
    cyw, syw, cp, sp = np.cos(yaw), np.sin(yaw), np.cos(pitch), np.sin(pitch)
    fwd = np.array([syw * cp, sp, cyw * cp])
    right = np.array([-cyw, 0.0, syw])  # fwd x up: right-handed camera (x right, y down, z forward)
    down = np.cross(fwd, right)
    return np.stack([right, down, fwd], axis=1)


def _screen_rects(scene, R, intr, size):
    """Pixel rectangle (v0, v1, u0, u1) that each box can cover, or None if it is behind the camera.

    All boxes' 8 corners are projected in one batch; a box straddling the image plane gets the
    whole screen (the slab test below is exact either way, the rectangle only saves work).
    """
    boxes = scene["boxes"]
    if not boxes:
        return []
    fx, fy, cx, cy = intr
    h, w = size
    sel = np.array([[i >> 2 & 1, i >> 1 & 1, i & 1] for i in range(8)], float)
    lo = np.array([b[0] for b in boxes])
    hi = np.array([b[1] for b in boxes])
    pc = (lo[:, None] + sel[None] * (hi - lo)[:, None] - scene["cam"]) @ R  # (B, 8, 3) camera coords
    z = pc[..., 2]
    zs = np.where(z > 0.05, z, 1.0)
    us, vs = fx * pc[..., 0] / zs + cx, fy * pc[..., 1] / zs + cy
    u0 = np.clip(np.floor(us.min(1)) - 1, 0, w).astype(int)
    u1 = np.clip(np.ceil(us.max(1)) + 2, 0, w).astype(int)
    v0 = np.clip(np.floor(vs.min(1)) - 1, 0, h).astype(int)
    v1 = np.clip(np.ceil(vs.max(1)) + 2, 0, h).astype(int)
    front, behind = (z > 0.05).all(1), (z <= 0.05).all(1)
    out = []
    for k in range(len(boxes)):
        if behind[k]:
            out.append(None)
        elif not front[k]:
            out.append((0, h, 0, w))
        elif u0[k] >= u1[k] or v0[k] >= v1[k]:
            out.append(None)
        else:
            out.append((int(v0[k]), int(v1[k]), int(u0[k]), int(u1[k])))
    return out


def render(scene, cfg: SynthConfig, rng: np.random.Generator, texture_rng: np.random.Generator | None = None):
    """One frame of ``scene``: rgb, segmentation, depth (noisy and clean) and camera-frame normals.

    ``texture_rng`` draws the per-instance texture jitter (default: ``rng``); a sequence hands a fresh
    generator of one seed to every frame, so a surface keeps its texture while the camera moves."""
    t, mat, face, d, R, o, room = _trace(scene, cfg)
    return _shade(scene, cfg, rng, (t, mat, face, d, R, o, room), texture_rng or rng)


def _trace(scene, cfg: SynthConfig):
    """Cast one ray per pixel: hit distance ``t``, material id and hit face, with the rays and camera."""
    h, w = cfg.size
    d, R, (fx, fy, cx, cy) = camera_rays(cfg.size, scene["yaw"], scene["pitch"])
    o = [float(v) for v in scene["cam"]]  # Python floats keep the arrays float32 (NEP 50)
    room = {k: (float(v) if np.isscalar(v) else v) for k, v in scene["room"].items()}
    dx, dy, dz = d
    inv = [np.float32(1.0) / np.where(np.abs(c) < 1e-9, np.float32(1e-9), c) for c in d]
    # Room: the ray leaves the box [0,W]x[0,H]x[0,L] through the nearest exit plane.
    tx = np.where(dx > 0, np.float32(room["W"] - o[0]), np.float32(-o[0])) * inv[0]
    ty = np.where(dy > 0, np.float32(room["H"] - o[1]), np.float32(-o[1])) * inv[1]
    tz = np.where(dz > 0, np.float32(room["L"] - o[2]), np.float32(-o[2])) * inv[2]
    t = np.minimum(np.minimum(tx, ty), tz)
    # face = 2 * axis + (d[axis] < 0): the face's outward normal is -sign(d) along that axis.
    neg = [(c < 0).astype(np.int8) for c in d]
    face = np.where(t == tx, neg[0], np.where(t == ty, 2 + neg[1], 4 + neg[2])).astype(np.int8)
    # material id: 0 wall, 1 floor (face 3: normal +y), 2 ceiling (face 2), 3+k box k
    mat = np.where(face == 3, 1, np.where(face == 2, 2, 0)).astype(np.int16)

    rects = _screen_rects(scene, R, (fx, fy, cx, cy), (h, w))
    for k, ((lo, hi, _cls, _col), rect) in enumerate(zip(scene["boxes"], rects)):
        if rect is None:
            continue
        v0, v1, u0, u1 = rect
        sl = (slice(v0, v1), slice(u0, u1))
        tmin = None
        for a in range(3):
            ia = inv[a][sl]
            t1, t2 = float(lo[a] - o[a]) * ia, float(hi[a] - o[a]) * ia
            near, far = np.minimum(t1, t2), np.maximum(t1, t2)
            if tmin is None:
                tmin, tmax, fc = near, far, neg[0][sl]
            else:
                fc = np.where(near > tmin, 2 * a + neg[a][sl], fc)
                tmin, tmax = np.maximum(tmin, near), np.minimum(tmax, far)
        tsub = t[sl]
        hit = (tmax >= tmin) & (tmin > 1e-3) & (tmin < tsub)
        if not hit.any():
            continue
        tsub[hit] = tmin[hit]
        mat[sl][hit] = 3 + k
        face[sl][hit] = fc[hit]
    return t, mat, face, d, R, o, room


def _shade(scene, cfg: SynthConfig, rng: np.random.Generator, traced, texture_rng: np.random.Generator):
    """Labels, texture, Lambertian shading and sensor noise for the traced hits."""
    h, w = cfg.size
    t, mat, face, d, R, o, room = traced
    # Per-material tables
    n_mat = 3 + len(scene["boxes"])
    cls_t = np.empty(n_mat, np.uint8)
    alb_t = np.empty((n_mat, 3), np.float32)
    cls_t[:3] = (C["wall"], C["floor"], C["ceiling"])
    alb_t[0], alb_t[1], alb_t[2] = room["wall"], room["floor"], room["ceiling"]
    for k, (_lo, _hi, cls, col) in enumerate(scene["boxes"]):
        cls_t[3 + k], alb_t[3 + k] = cls, col
    # Texture per class (world-space frequency along x, y, z and amplitude), jittered per instance.
    freq = (_TEX_FREQ[cls_t] * texture_rng.uniform(0.8, 1.25, (n_mat, 1))).astype(np.float32)
    amp = (_TEX_AMP[cls_t] * texture_rng.uniform(0.7, 1.3, n_mat)).astype(np.float32)

    mat = mat.astype(np.intp)  # np.take is fastest with native indices
    segm = np.take(cls_t, mat)
    P = np.asarray(o, np.float32)[:, None, None] + d * t  # world hit points (3, H, W)
    face_normals = np.repeat(np.eye(3, dtype=np.float32), 2, axis=0) * np.tile(np.float32([-1, 1]), 3)[:, None]
    face = face.astype(np.intp)
    nw = np.empty((3, h, w), np.float32)  # world normal
    for a in range(3):
        np.take(face_normals[:, a], face, out=nw[a], mode="clip")  # mode='raise' would buffer out
    # Texture: stripes/grain along world coordinates, per-material frequency and amplitude.
    phase = np.take(freq[:, 0], mat) * P[0] + np.take(freq[:, 1], mat) * P[1] + np.take(freq[:, 2], mat) * P[2]
    tex = 1.0 + np.take(amp, mat) * np.sin(phase)
    # Lambertian shading with falloff 1 / (1 + 0.08 d^2), plus ambient.
    shade = np.full((h, w), 0.28, np.float32)
    for Lp in scene["lights"]:
        lx, ly, lz = (np.float32(Lp[a]) - P[a] for a in range(3))
        dist2 = lx * lx + ly * ly + lz * lz + np.float32(1e-6)
        ndotl = nw[0] * lx + nw[1] * ly + nw[2] * lz
        np.maximum(ndotl, 0, out=ndotl)
        shade += ndotl * (np.float32(0.95) / (np.sqrt(dist2) * (np.float32(1.0) + np.float32(0.08) * dist2)))
    lum = tex * shade * np.float32(255.0)
    rgb = np.empty((h, w, 3), np.float32)
    for c in range(3):
        rgb[..., c] = np.take(alb_t[:, c], mat) * lum
    if cfg.noise:
        rgb += np.float32(0.015 * 255) * _noise(rng, (h, w, 3), 0)
    np.minimum(np.maximum(rgb, 0, out=rgb), 255, out=rgb)  # np.clip is ~4x slower on float32
    rgb8 = rgb.astype(np.uint8)

    depth = t.astype(np.float32)
    depth_clean = depth.copy()
    if cfg.noise:
        depth = kinect_noise(depth, rng)
    # channels in the authors' order (x, z, y) of the camera frame: what their three-task network predicts
    # (ExpNYUD_three.ipynb's "xzy->RGB"; see layout.read_normals)
    normals_cam = np.einsum("ij,jhw->ihw", R.T.astype(np.float32), nw)[[0, 2, 1]].transpose(1, 2, 0)
    return dict(rgb=rgb8, segm=segm, depth=depth, depth_clean=depth_clean, normals=normals_cam.astype(np.float32))


_NOISE_TILE: np.ndarray | None = None


def _noise(rng: np.random.Generator, shape, channel: int) -> np.ndarray:
    """Standard-normal noise as a random window of a fixed tile of 4M samples.

    Drawing 230k fresh Gaussians costs ~3 ms, a third of the frame budget at 240x320; a window at
    a per-frame random offset (and per-channel plane) is just as white for a network and keeps
    every frame a pure function of (seed, index).
    """
    global _NOISE_TILE
    if _NOISE_TILE is None:
        _NOISE_TILE = np.random.default_rng(20190520).standard_normal(1 << 22, dtype=np.float32)
    n = math.prod(shape)
    if n > _NOISE_TILE.size // 2:
        return rng.standard_normal(shape, dtype=np.float32)
    off = int(rng.integers(0, _NOISE_TILE.size - n)) + channel  # channel: decorrelate same-offset calls
    off = min(off, _NOISE_TILE.size - n)
    return _NOISE_TILE[off:off + n].reshape(shape)


def kinect_noise(depth: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Axial noise sigma = 0.0012 + 0.0019 (z - 0.4)^2 m (Nguyen et al. 2012), holes at depth edges,
    random dropout blobs, and no return outside the sensor's 0.5-10 m range."""
    out = depth + _noise(rng, depth.shape, 1) * (0.0012 + 0.0019 * (depth - 0.4) ** 2)
    gy = np.abs(np.diff(depth, axis=0, prepend=depth[:1]))
    gx = np.abs(np.diff(depth, axis=1, prepend=depth[:, :1]))
    edge = (gx + gy) > 0.08 * depth
    drop = edge & (_noise(rng, depth.shape, 2) < 0.5244)  # P(N(0,1) < 0.5244) = 0.7
    h, w = depth.shape
    for _ in range(int(rng.integers(0, 4))):
        r = rng.uniform(0.02, 0.06) * min(h, w)
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        yy = (np.arange(h, dtype=np.float32) - np.float32(cy)) ** 2
        xx = (np.arange(w, dtype=np.float32) - np.float32(cx)) ** 2
        drop |= yy[:, None] + xx[None, :] < np.float32(r * r)
    drop |= (depth < 0.5) | (depth > 10.0)
    out[drop] = 0.0
    return out


def generate_frame(seed: int, index: int, cfg: SynthConfig = SynthConfig()) -> dict:
    """One frame: rgb uint8 (H,W,3), segm uint8 (H,W), depth float32 metres (0 = invalid),
    depth_clean, normals float32 (H,W,3) camera frame in (x, z, y) order, and the camera parameters."""
    rng = np.random.default_rng([int(seed), int(index)])
    scene = make_scene(rng, cfg)
    out = render(scene, cfg, rng)
    out["camera"] = dict(position=scene["cam"].tolist(), yaw=float(scene["yaw"]), pitch=float(scene["pitch"]),
                         room=[scene["room"]["W"], scene["room"]["H"], scene["room"]["L"]])
    return out
