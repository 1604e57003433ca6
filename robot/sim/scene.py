"""MJCF for the workcell: a table under the FR3, the task objects of the DreamVLA paper (§4.3), and two D415 cameras.

Everything is built from primitives (boxes, capsules, cylinders, spheres), so the scene adds no mesh assets to
franky-sim's FR3. Dimensions are chosen for the Franka hand, whose geometry fixes what a
top-down grasp can hold (measured from franky-sim's fr3.xml, hand frame = flange rotated -45° about z):
- the fingers close along hand y; the pads span ±8.5 mm around the TCP in z and the fingertips reach 9 mm below
  the TCP (franky's `ee` frame, 0.1034 m below the flange), the hand housing starts 37 mm above the TCP and is
  ±0.10 m long along y, ±32 mm along x; the fingers open to 80 mm, are 24 mm thick and ±10.5 mm wide.
- so a top-down grasp holds at most the top ~35 mm of an object, the part held must be < 80 mm wide, and a
  lying object must be at least ~10 mm thick for the fingertips to clear the table.

Frames: the world frame is franky's `base` frame (the robot is mounted at the origin on the table top, z = 0).
Every object frame sits at its resting contact point or centre as documented per object, z up when upright.
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from dataclasses import dataclass

import numpy as np

ROBOT_PREFIX = "robot0_"  # franky-sim prefixes the names of its first robot
HAND_BODY = f"{ROBOT_PREFIX}hand"
TCP_IN_HAND = np.array([0.0, 0.0, 0.1034])  # franky-sim's default F_T_EE (the hand body shares its rotation)
HAND_OPEN_WIDTH = 0.08

TABLE_HALF = (0.6, 0.7, 0.02)  # x, y, thickness/2; top surface at z = 0
TABLE_CENTER_XY = (0.4, 0.0)
FLOOR_Z = -0.75

# D415 colour at 640x480 is a 4:3 crop of the 1920x1080 sensor: fy ≈ 615 px, i.e. 42.6° vertical, 54.5°
# horizontal (the 69°x42° datasheet figure is for 16:9). MuJoCo renders square pixels from fovy alone.
D415_FOVY_DEG = 42.6

# Third-person camera at the front-right of the table, ~1 m from the workspace centre: it sees the arm, the
# objects and the drawer front (drawers open toward the robot) from the side.
STATIC_CAM_POS = (0.85, -0.8, 0.75)
STATIC_CAM_TARGET = (0.42, 0.0, 0.2)
# Wrist camera on the hand's robot-facing side (-x of the hand, i.e. behind the fingers at the home pose),
# 15 mm below the flange, tilted 20° forward so it sees the fingertips at the bottom of the image and the
# table ahead of the gripper (like a D415 on a side bracket).
WRIST_CAM_POS_IN_HAND = (-0.065, 0.0, 0.015)
WRIST_CAM_TILT_RAD = math.radians(20.0)

OBJECT_FRICTION = "1.5 0.02 0.002"  # sliding, torsional, rolling: grippy plastic/rubber


@dataclass(frozen=True)
class Graspable:
    """What a top-down expert needs to know about an object, in the object's own frame.

    grasp_point: where the TCP goes. close_axis: the horizontal axis the fingers close along; None means the
    object is symmetric about its z axis, so any yaw works. rest_z: height of the object frame above the table
    when resting upright (used to place it without a drop).
    """

    grasp_point: tuple[float, float, float]
    close_axis: tuple[float, float, float] | None
    rest_z: float
    footprint_radius: float


GRASPABLES: dict[str, Graspable] = {
    # Bottle frame: bottom centre. Held by the neck: the body (64 mm) fits the hand too, but only the top 35 mm
    # of an object fits between the fingers.
    "bottle": Graspable(grasp_point=(0.0, 0.0, 0.177), close_axis=None, rest_z=0.0, footprint_radius=0.035),
    # Doll frame: bottom centre of the sitting torso; held by the head.
    "doll": Graspable(grasp_point=(0.0, 0.0, 0.108), close_axis=(0.0, 1.0, 0.0), rest_z=0.0, footprint_radius=0.07),
    # Banana and chili frames: centre of the middle segment, x along the fruit; held across the middle.
    "banana": Graspable(grasp_point=(0.0, 0.0, 0.0), close_axis=(0.0, 1.0, 0.0), rest_z=0.018, footprint_radius=0.1),
    "chili": Graspable(grasp_point=(-0.005, 0.0, 0.0), close_axis=(0.0, 1.0, 0.0), rest_z=0.013, footprint_radius=0.07),
}

BASKET_INNER_HALF = 0.10  # inner floor is 0.20 m square
BASKET_FLOOR_TOP = 0.01
BASKET_WALL_TOP = 0.07

# Cabinet frame: centre of the front bottom edge, x pointing into the cabinet (away from the drawer front),
# z up. The drawer slides along -x; its joint value is the opening in metres (0 = closed).
CABINET_DEPTH, CABINET_HALF_WIDTH, CABINET_HEIGHT = 0.26, 0.15, 0.14
DRAWER_TRAVEL = 0.22
# The handle is a vertical bar 50 mm in front of the drawer face, so the hand (±32 mm along x) can straddle it
# with the fingers closing along the cabinet's y axis without touching the front panel.
HANDLE_IN_DRAWER = (-0.05, 0.0, 0.075)  # bar centre
HANDLE_GRASP_IN_DRAWER = (-0.05, 0.0, 0.097)  # TCP for a grasp: pads on the bar's upper part, clear of standoffs
HANDLE_RADIUS = 0.007


def _fmt(values: tuple[float, ...] | list[float] | np.ndarray) -> str:
    return " ".join(f"{float(v):.6g}" for v in values)


def _geom(parent: ET.Element, **attrs: str) -> ET.Element:
    return ET.SubElement(parent, "geom", **attrs)


def look_at_xyaxes(pos: tuple[float, ...], target: tuple[float, ...]) -> str:
    """MJCF `xyaxes` for a camera at `pos` looking at `target` with the image upright (world z up)."""
    forward = np.asarray(target, float) - np.asarray(pos, float)
    forward /= np.linalg.norm(forward)
    right = np.cross(forward, [0.0, 0.0, 1.0])
    right /= np.linalg.norm(right)
    up = np.cross(right, forward)
    return _fmt(np.concatenate([right, up]))


def wrist_camera_xyaxes(tilt: float) -> str:
    """MJCF `xyaxes` (hand frame) for a camera at hand -x looking along hand +z, pitched `tilt` toward +x.

    Optical frame: z_opt = (sin t, 0, cos t), y_opt (image down) = (cos t, 0, -sin t) toward the fingers,
    x_opt = y_opt × z_opt = hand -y. MuJoCo cameras look along -z with y up: x_cam = x_opt, y_cam = -y_opt.
    """
    return _fmt((0.0, -1.0, 0.0, -math.cos(tilt), 0.0, math.sin(tilt)))


def configure_visual(scene: ET.Element, offwidth: int, offheight: int) -> None:
    """Offscreen buffer big enough for the cameras; no MSAA (8x costs ~4x the render time on llvmpipe).

    No skybox either: on llvmpipe it costs as much as the whole rest of the scene; backdrop walls
    (`add_table`) give the images a neutral background instead.
    """
    visual = scene.find("visual")
    assert visual is not None, "franky-sim's scene always has a <visual> element"
    quality = visual.find("quality")
    if quality is None:
        quality = ET.SubElement(visual, "quality")
    quality.set("offsamples", "0")
    ET.SubElement(visual, "global", offwidth=str(offwidth), offheight=str(offheight))
    # Fixed clipping planes: znear = 0.01 * extent = 1 cm, zfar = 5 m; extent no longer depends on the floor.
    ET.SubElement(visual, "map", znear="0.01", zfar="5")
    ET.SubElement(scene, "statistic", extent="1.0", center="0.4 0 0.2")


def configure_physics(scene: ET.Element) -> None:
    """Contact settings that let the Franka pads hold small objects without creep.

    Elliptic friction cones with a high impratio make tangential contact forces stiff (no slow slip under
    gravity), and multiccd gives flat-on-flat contacts several points instead of one pivot.
    """
    option = scene.find("option")
    if option is None:
        option = ET.SubElement(scene, "option")
    option.set("cone", "elliptic")
    option.set("impratio", "10")
    ET.SubElement(option, "flag", multiccd="enable")


def add_table(worldbody: ET.Element) -> None:
    """Table top at z = 0 under the robot base; the floor drops to FLOOR_Z (franky-sim puts it at z = 0)."""
    for geom in worldbody.findall("geom"):
        if geom.get("name") == "ground":
            geom.set("pos", f"0 0 {FLOOR_Z}")
    _geom(
        worldbody, name="table", type="box", size=_fmt(TABLE_HALF),
        pos=_fmt((*TABLE_CENTER_XY, -TABLE_HALF[2])), rgba="0.78 0.7 0.58 1", friction="1 0.005 0.0001",
    )
    for sx in (-1, 1):
        for sy in (-1, 1):
            x = TABLE_CENTER_XY[0] + sx * (TABLE_HALF[0] - 0.05)
            y = TABLE_CENTER_XY[1] + sy * (TABLE_HALF[1] - 0.05)
            _geom(
                worldbody, type="box", size=_fmt((0.03, 0.03, (-FLOOR_Z - 2 * TABLE_HALF[2]) / 2)),
                pos=_fmt((x, y, (FLOOR_Z - 2 * TABLE_HALF[2]) / 2)), rgba="0.45 0.35 0.25 1",
                contype="0", conaffinity="0",
            )
    # Lab walls behind the table (visual only), seen by the static camera instead of a black void.
    for pos, size in (((-0.8, 0.0, 0.5), (0.01, 2.5, 1.3)), ((0.6, 1.6, 0.5), (2.0, 0.01, 1.3))):
        _geom(worldbody, type="box", size=_fmt(size), pos=_fmt(pos), rgba="0.97 0.97 0.97 1", contype="0",
              conaffinity="0", group="1")


def paint_robot_collision_geometry(robot_root: ET.Element) -> None:
    """Colour the FR3's collision meshes like the robot, so cameras can render them instead of the visual ones.

    The visual meshes have 240k triangles, the collision meshes 2.5k: rendering the latter makes a 640x480
    frame ~4x cheaper on llvmpipe (see `robot.sim.render`). Physics ignores rgba.
    """
    for body in robot_root.iter("body"):
        finger = "finger" in body.get("name", "")
        for geom in body.findall("geom"):
            cls = geom.get("class", "")
            if "collision" in cls:
                rgba = "0.15 0.15 0.15 1" if "pad" in cls else "0.3 0.3 0.3 1" if finger else "0.93 0.93 0.92 1"
                geom.set("rgba", rgba)


def add_static_camera(worldbody: ET.Element) -> None:
    ET.SubElement(
        worldbody, "camera", name="static", pos=_fmt(STATIC_CAM_POS),
        xyaxes=look_at_xyaxes(STATIC_CAM_POS, STATIC_CAM_TARGET), fovy=f"{D415_FOVY_DEG}",
    )


def add_wrist_camera(robot_root: ET.Element, hand_body_name: str) -> None:
    """Attach the wrist D415 (a visual-only box and a camera) to the robot's hand body."""
    hand = next((b for b in robot_root.iter("body") if b.get("name") == hand_body_name), None)
    if hand is None:
        raise ValueError(f"hand body {hand_body_name!r} not found in the robot MJCF")
    mount = ET.SubElement(hand, "body", name="wrist_camera_mount", pos=_fmt(WRIST_CAM_POS_IN_HAND))
    _geom(mount, type="box", size="0.0115 0.0495 0.01", pos="-0.012 0 0", rgba="0.1 0.1 0.1 1",
          contype="0", conaffinity="0", mass="0")
    ET.SubElement(mount, "camera", name="wrist", pos="0 0 0", xyaxes=wrist_camera_xyaxes(WRIST_CAM_TILT_RAD),
                  fovy=f"{D415_FOVY_DEG}")


def add_textured_plate(
    scene: ET.Element, parent: ET.Element, name: str, texture_png: str, size_xy: tuple[float, float],
    T_parent_plate: np.ndarray, thickness: float = 0.001,
) -> None:
    """A thin visual-only plate showing `texture_png` (e.g. a calibration board) in body `parent`.

    Plate frame (OpenCV's for a printed pattern): origin at the image's top-left corner on the printed face,
    x along image columns, y along image rows, z into the plate; the print faces -z. MuJoCo draws a box's 2-D
    texture on its +z face with image columns along +x and rows along -y, hence the half-turn about x.
    """
    import mujoco  # here, not at the top: launch-config loading imports this module without the sim extra

    asset = scene.find("asset")
    if asset is None:
        asset = ET.SubElement(scene, "asset")
    ET.SubElement(asset, "texture", name=f"{name}_tex", type="2d", file=texture_png)
    ET.SubElement(asset, "material", name=f"{name}_mat", texture=f"{name}_tex", texrepeat="1 1",
                  texuniform="false", specular="0", shininess="0")
    w, h = size_xy
    R = np.asarray(T_parent_plate)[:3, :3] @ np.diag([1.0, -1.0, -1.0])
    centre = np.asarray(T_parent_plate)[:3, :3] @ np.array([w / 2, h / 2, thickness / 2]) + T_parent_plate[:3, 3]
    quat = np.zeros(4)
    mujoco.mju_mat2Quat(quat, R.reshape(9))
    _geom(parent, name=name, type="box", size=_fmt((w / 2, h / 2, thickness / 2)), pos=_fmt(centre),
          quat=_fmt(quat), material=f"{name}_mat", contype="0", conaffinity="0", mass="0", group="1")


def _free_body(worldbody: ET.Element, name: str) -> ET.Element:
    body = ET.SubElement(worldbody, "body", name=name, pos="0 0 -0.5")
    ET.SubElement(body, "freejoint", name=f"{name}_joint")
    return body


def _object_geom(body: ET.Element, mass: float, **attrs: str) -> ET.Element:
    return _geom(body, mass=f"{mass:.6g}", friction=OBJECT_FRICTION, condim="4", **attrs)


def add_bottle(worldbody: ET.Element) -> None:
    """A 0.5 l plastic bottle: 64 mm body, 27 mm neck, 206 mm tall, 200 g."""
    body = _free_body(worldbody, "bottle")
    rgba = "0.25 0.55 0.85 0.9"
    _object_geom(body, 0.17, type="cylinder", size="0.032 0.065", pos="0 0 0.065", rgba=rgba)
    _object_geom(body, 0.015, type="cylinder", size="0.022 0.01", pos="0 0 0.14", rgba=rgba)
    _object_geom(body, 0.01, type="cylinder", size="0.0135 0.022", pos="0 0 0.172", rgba=rgba)
    _object_geom(body, 0.005, type="cylinder", size="0.015 0.006", pos="0 0 0.2", rgba="0.95 0.95 0.95 1")


def add_doll(worldbody: ET.Element) -> None:
    """A sitting plush doll: torso, legs forward (+x), arms to the sides, a 56 mm head; 136 mm tall, 90 g."""
    body = _free_body(worldbody, "doll")
    cloth, skin = "0.85 0.35 0.55 1", "0.95 0.8 0.65 1"
    _object_geom(body, 0.04, type="box", size="0.025 0.032 0.04", pos="0 0 0.04", rgba=cloth)
    for y in (-0.016, 0.016):
        _object_geom(body, 0.008, type="capsule", size="0.012", fromto=f"0.01 {y} 0.012 0.06 {y} 0.012", rgba=cloth)
        _object_geom(body, 0.004, type="capsule", size="0.009",
                     fromto=f"0 {3 * y} 0.065 0 {4.2 * y} 0.035", rgba=cloth)
    _object_geom(body, 0.026, type="sphere", size="0.028", pos="0 0 0.108", rgba=skin)


def add_banana(worldbody: ET.Element) -> None:
    """A banana lying on its side: three 36 mm capsules in an arc, ~0.2 m long, 120 g."""
    body = _free_body(worldbody, "banana")
    yellow = "0.95 0.83 0.2 1"
    _object_geom(body, 0.05, type="capsule", size="0.018", fromto="-0.035 0 0 0.035 0 0", rgba=yellow)
    bend = math.radians(28.0)
    for sx in (-1, 1):
        end = (sx * (0.035 + 0.06 * math.cos(bend)), 0.06 * math.sin(bend), 0.0)
        _object_geom(body, 0.035, type="capsule", size="0.016", fromto=f"{sx * 0.035} 0 0 {_fmt(end)}", rgba=yellow)
        _geom(body, type="sphere", size="0.008", pos=_fmt((end[0] + sx * 0.012, end[1] + 0.004, 0.0)),
              rgba="0.35 0.25 0.1 1", contype="0", conaffinity="0", mass="0")


def add_chili(worldbody: ET.Element) -> None:
    """A red chili pepper lying down: 26 mm x 0.1 m capsule with a green stem, 25 g."""
    body = _free_body(worldbody, "chili")
    _object_geom(body, 0.022, type="capsule", size="0.013", fromto="-0.045 0 0 0.035 0 0", rgba="0.8 0.08 0.05 1")
    _object_geom(body, 0.003, type="capsule", size="0.005", fromto="0.045 0 0.002 0.062 0 0.01",
                 rgba="0.2 0.55 0.15 1")


def add_basket(worldbody: ET.Element) -> None:
    """A wicker-coloured open box, 0.2 m square inside, 70 mm walls; a mocap body, so it never moves."""
    body = ET.SubElement(worldbody, "body", name="basket", mocap="true", pos="0 0 -0.5")
    brown = "0.55 0.4 0.25 1"
    h = BASKET_INNER_HALF
    _geom(body, type="box", size=f"{h + 0.012} {h + 0.012} 0.005", pos="0 0 0.005", rgba=brown)
    wall_half_h = (BASKET_WALL_TOP - BASKET_FLOOR_TOP) / 2
    zc = BASKET_FLOOR_TOP + wall_half_h
    for sx, sy in ((1, 0), (-1, 0), (0, 1), (0, -1)):
        size = (0.006, h + 0.012, wall_half_h) if sx else (h + 0.012, 0.006, wall_half_h)
        _geom(body, type="box", size=_fmt(size), pos=_fmt((sx * (h + 0.006), sy * (h + 0.006), zc)), rgba=brown)


def add_cabinet(worldbody: ET.Element) -> None:
    """A small cabinet (mocap, immovable) with one drawer on a slide joint `drawer_joint` and a bar handle.

    Contacts between the drawer and its parent cabinet are filtered by MuJoCo (parent/child), so the drawer
    cannot jam; the joint range [0, DRAWER_TRAVEL] provides the closed and fully-open stops.
    """
    cab = ET.SubElement(worldbody, "body", name="cabinet", mocap="true", pos="0 0 -0.5")
    white, blue, metal = "0.92 0.92 0.9 1", "0.55 0.7 0.85 1", "0.3 0.3 0.32 1"
    d, w, h, t = CABINET_DEPTH, CABINET_HALF_WIDTH, CABINET_HEIGHT, 0.005
    _geom(cab, type="box", size=_fmt((d / 2, w, t)), pos=_fmt((d / 2, 0, t)), rgba=white)
    _geom(cab, type="box", size=_fmt((d / 2, w, t)), pos=_fmt((d / 2, 0, h - t)), rgba=white)
    for sy in (-1, 1):
        _geom(cab, type="box", size=_fmt((d / 2, t, h / 2)), pos=_fmt((d / 2, sy * (w - t), h / 2)), rgba=white)
    _geom(cab, type="box", size=_fmt((t, w, h / 2)), pos=_fmt((d - t, 0, h / 2)), rgba=white)

    drawer = ET.SubElement(cab, "body", name="drawer", pos="0 0 0")
    ET.SubElement(drawer, "joint", name="drawer_joint", type="slide", axis="-1 0 0",
                  range=f"0 {DRAWER_TRAVEL}", limited="true", damping="4", frictionloss="0.5", armature="0.05")
    inner_w = w - 2 * t - 0.004
    _geom(drawer, type="box", size=_fmt((0.006, w - 0.012, h / 2 - 0.012)), pos=_fmt((0, 0, h / 2)), rgba=blue,
          mass="0.2")
    _geom(drawer, type="box", size=_fmt((0.11, inner_w, 0.004)), pos=_fmt((0.116, 0, 0.016)), rgba=white, mass="0.2")
    for sy in (-1, 1):
        _geom(drawer, type="box", size=_fmt((0.11, 0.004, 0.04)), pos=_fmt((0.116, sy * inner_w, 0.056)),
              rgba=white, mass="0.05")
    _geom(drawer, type="box", size=_fmt((0.004, inner_w, 0.04)), pos=_fmt((0.222, 0, 0.056)), rgba=white, mass="0.05")
    hx, _, hz = HANDLE_IN_DRAWER
    _geom(drawer, name="drawer_handle", type="capsule", size=f"{HANDLE_RADIUS}",
          fromto=f"{hx} 0 {hz - 0.04} {hx} 0 {hz + 0.04}", rgba=metal, friction=OBJECT_FRICTION, condim="4",
          mass="0.05")
    for z in (hz - 0.03, hz - 0.005):
        _geom(drawer, type="capsule", size="0.005", fromto=f"{hx} 0 {z} -0.006 0 {z}", rgba=metal, mass="0.01")
    ET.SubElement(drawer, "site", name="drawer_handle_site", pos=_fmt(HANDLE_IN_DRAWER), size="0.005")


OBJECT_BUILDERS = {
    "bottle": add_bottle,
    "doll": add_doll,
    "banana": add_banana,
    "chili": add_chili,
    "basket": add_basket,
    "cabinet": add_cabinet,
}
