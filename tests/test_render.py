"""View-frustum culling (sim/render.py): the same pixels from fewer vertices."""

from __future__ import annotations

import mujoco
import numpy as np
import pytest

from vla_distill.sim import render
from vla_distill.sim.render import cull_scene, outside_view

# A camera at the origin looking along -x (its -z), and one box-shaped mesh in front of it, one beside it out of the
# 45-degree view, one behind it and one straddling the view's edge
SCENE = """
<mujoco>
  <asset><mesh name="box" vertex="-.1 -.1 -.1  .1 -.1 -.1  -.1 .1 -.1  .1 .1 -.1
                                  -.1 -.1 .1  .1 -.1 .1  -.1 .1 .1  .1 .1 .1"/></asset>
  <worldbody>
    <light pos="0 0 3"/>
    <camera name="eye" pos="0 0 0" xyaxes="0 1 0 0 0 1" fovy="45"/>
    <geom name="ahead" type="mesh" mesh="box" pos="-2 0 0" rgba="1 0 0 1"/>
    <geom name="beside" type="mesh" mesh="box" pos="-1 3 0" rgba="0 1 0 1"/>
    <geom name="behind" type="mesh" mesh="box" pos="2 0 0" rgba="0 0 1 1"/>
    <geom name="edge" type="mesh" mesh="box" pos="-2 0.9 0" rgba="1 1 0 1"/>
  </worldbody>
</mujoco>
"""


def test_only_spheres_wholly_outside_the_view_are_dropped():
    cam_mat = np.eye(3)  # looking along -z
    centers = np.array([[0, 0, -5], [0, 0, 5], [10, 0, -5], [0, -10, -5], [2.2, 0, -5], [0, 0, 0.5]])
    radii = np.array([1, 1, 1, 1, 0.5, 1.0])
    # tan(22.5 deg) * 5 = 2.07: a sphere of radius 0.5 at 2.2 still reaches into the view; one straddling the eye too
    expected = [False, True, True, True, False, False]
    assert outside_view(centers, radii, np.zeros(3), cam_mat, 45.0, 1.0).tolist() == expected
    # a wider image keeps more at the sides, never fewer
    assert not outside_view(centers[[2]], radii[[2]], np.zeros(3), cam_mat, 45.0, 4.0)[0]


@pytest.mark.parametrize("size", [(64, 64), (48, 96)])
def test_culling_leaves_the_image_unchanged(size):
    model = mujoco.MjModel.from_xml_string(SCENE)
    data = mujoco.MjData(model)
    mujoco.mj_forward(model, data)
    camera = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_CAMERA, "eye")
    with mujoco.Renderer(model, *size) as r:
        r.update_scene(data, camera=camera)
        full = r.render()
        r.update_scene(data, camera=camera)
        dropped = cull_scene(r.scene, model, data, camera, r.width / r.height)
        kept = {mujoco.mj_id2name(model, mujoco.mjtObj.mjOBJ_GEOM, g.objid) for g in r.scene.geoms[:r.scene.ngeom]
                if g.type == mujoco.mjtGeom.mjGEOM_MESH}
        culled = r.render()
    assert dropped == 2 and kept == {"ahead", "edge"}
    assert full[..., 0].max() > 0 and full[..., 1].max() > 0  # red ahead and yellow at the edge are drawn
    np.testing.assert_array_equal(culled, full)


def test_metaworld_frames_are_the_same_culled(monkeypatch):
    """The MetaWorld adapter culls too: both cameras' frames through an expert episode equal the unculled ones."""
    from vla_distill.sim.registry import get_simulator

    sim = get_simulator("metaworld")
    keys = ("observation.images.corner2", "observation.images.gripper")
    env, expert = sim.make_env("push-v3", keys, (64, 64)), sim.expert("push-v3")
    dropped = []
    culling = render.cull_scene
    try:
        env.reset(5)
        for _ in range(3):
            monkeypatch.setattr(render, "cull_scene", lambda *a: dropped.append(culling(*a)))
            culled = {k: env.render(k.rsplit(".", 1)[-1]) for k in keys}
            monkeypatch.setattr(render, "cull_scene", lambda *a: None)
            for k in keys:
                np.testing.assert_array_equal(culled[k], env.render(k.rsplit(".", 1)[-1]), err_msg=k)
            for _ in range(10):
                env.step(expert(env.env_state))
    finally:
        env.close()
    assert max(dropped[1::2]) > 0  # the gripper camera drops some of the arm
