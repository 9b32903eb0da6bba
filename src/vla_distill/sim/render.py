"""View-frustum culling for MuJoCo's offscreen renderer on a CPU (Mesa llvmpipe).

A software renderer pays for every vertex of every mesh in the scene, in view or not, and MuJoCo culls nothing: a
LIBERO frame costs the same at 64 px as at 256 px (BENCHMARKS.md, "LIBERO", speed). A mesh whose bounding sphere lies
wholly outside the camera's frustum cannot reach a pixel, so dropping it from the scene leaves the image unchanged
(tested pixel for pixel) and saves its vertices.
"""

from __future__ import annotations

import numpy as np


def outside_view(centers: np.ndarray, radii: np.ndarray, cam_pos: np.ndarray, cam_mat: np.ndarray, fovy_deg: float,
                 aspect: float) -> np.ndarray:
    """(G,) bool: the spheres (G, 3) centres, (G,) radii, wholly outside a perspective camera's view.

    cam_mat (3, 3) is MuJoCo's camera frame (world from camera: x right, y up, looking along -z); aspect is the
    image's width / height. Conservative: a sphere is dropped only when it is behind one of the four side planes or
    behind the camera, never for the near or far plane."""
    v = (centers - cam_pos) @ cam_mat  # (G, 3) in the camera's frame
    depth = -v[:, 2]
    half_y = np.deg2rad(fovy_deg) / 2
    half_x = np.arctan(aspect * np.tan(half_y))
    out = depth + radii < 0
    for half, u in ((half_x, v[:, 0]), (half_y, v[:, 1])):
        # signed distance from each side plane through the camera, inclined `half` from the view axis
        out |= np.abs(u) * np.cos(half) - depth * np.sin(half) > radii
    return out


def cull_scene(scene, model, data, camera: int, aspect: float) -> int:
    """Drop from `scene` (an mjvScene after mjv_updateScene for `camera`, an id) the model's mesh geoms outside that
    camera's view in an image of `aspect` (width / height: mjr_render widens the frustum to the viewport); the number
    dropped. A dropped geom becomes mjGEOM_NONE, which mjr_render skips."""
    import mujoco

    mesh, none, geom = int(mujoco.mjtGeom.mjGEOM_MESH), int(mujoco.mjtGeom.mjGEOM_NONE), int(mujoco.mjtObj.mjOBJ_GEOM)
    candidates = [g for g in scene.geoms[:scene.ngeom] if g.type == mesh and g.objtype == geom]
    if not candidates:
        return 0
    centers = np.array([g.pos for g in candidates])
    radii = model.geom_rbound[[g.objid for g in candidates]]
    out = outside_view(centers, radii, data.cam_xpos[camera], data.cam_xmat[camera].reshape(3, 3),
                       float(model.cam_fovy[camera]), aspect)
    for g, o in zip(candidates, out, strict=True):
        if o:
            g.type = none
    return int(out.sum())


def render_view(renderer, data, camera: int, scene_option=None) -> np.ndarray:
    """(H, W, 3) uint8: one camera's frame with shadows and reflections off (most of a CPU renderer's cost, and the
    renderer's quality settings are made without them) and the meshes outside its view culled."""
    import mujoco

    renderer.update_scene(data, camera=camera, scene_option=scene_option)
    renderer.scene.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = 0
    renderer.scene.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = 0
    cull_scene(renderer.scene, renderer.model, data, camera, renderer.width / renderer.height)
    return renderer.render()
