"""Every annotation format, read from small files written in its true on-disk layout."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mlic.data.formats import detect_format, load_table
from mlic.data.formats._paths import safe_relative
from mlic.data.formats.coco import load_coco
from mlic.data.formats.csv_table import load_csv, save_csv
from mlic.data.formats.json_list import load_json_list
from mlic.data.formats.nuswide import load_nuswide
from mlic.data.formats.openimages import load_openimages
from mlic.data.formats.voc import VOC_CLASSES, load_voc
from mlic.data.table import LabelTable
from mlic.errors import DataError


def write_image(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (200, 30, 30)).save(path)  # format from the suffix: JPEG or PNG


def raises(match_all: list[str], fn, *args, **kwargs) -> str:
    """Call ``fn``, expect a DataError, check every string is in its message."""
    with pytest.raises(DataError) as info:
        fn(*args, **kwargs)
    message = str(info.value)
    for part in match_all:
        assert part in message, f"{part!r} not in {message!r}"
    return message


def test_safe_relative() -> None:
    assert safe_relative("a/./b.jpg", "/r", "f") == "a/b.jpg"
    assert safe_relative("a/../b.jpg", "/r", "f") == "b.jpg"
    for bad in ("../x.jpg", "a/../../x.jpg", "/abs/x.jpg", "C:\\x.jpg", ".."):
        raises([repr(bad), "outside", "f.json"], safe_relative, bad, "/r", "f.json")
        assert safe_relative(bad, "/r", "f", allow_outside_root=True) == bad
    raises(["non-empty"], safe_relative, "  ", "/r", "f")


def test_an_absolute_path_inside_the_root_is_taken_relative(tmp_path) -> None:
    root = tmp_path / "x"
    (root / "img").mkdir(parents=True)
    (tmp_path / "link").symlink_to(root)
    assert safe_relative(f"{root}/img/0001.png", root, "f") == "img/0001.png"
    assert safe_relative(f"{root}/img/0001.png", tmp_path / "link", "f") == "img/0001.png"
    # a neighbour whose name starts with the root's is outside, and said to be
    raises([f"{root}y/0001.png", "outside"], safe_relative, f"{root}y/0001.png", root, "f")
    path = tmp_path / "t.csv"
    path.write_text(f"image,labels\n{root}/img/0001.png,cat\n")
    assert load_csv(path, root=root).paths == ["img/0001.png"]


# ---------------------------------------------------------------- COCO

def coco_file(tmp_path: Path, **changes) -> Path:
    data = {
        "info": {"description": "tiny", "year": 2017},
        "licenses": [{"id": 1, "name": "x", "url": ""}],
        "images": [
            {"id": 139, "file_name": "000000000139.jpg", "height": 8, "width": 8, "license": 1},
            {"id": 285, "file_name": "000000000285.jpg", "height": 8, "width": 8, "license": 1},
            {"id": 632, "file_name": "000000000632.jpg", "height": 8, "width": 8, "license": 1},
        ],
        "annotations": [
            {"id": 1, "image_id": 139, "category_id": 1, "bbox": [1, 1, 2, 2], "area": 4.0,
             "segmentation": [[1, 1, 3, 1, 3, 3]], "iscrowd": 0},
            {"id": 2, "image_id": 139, "category_id": 1, "bbox": [2, 2, 2, 2], "area": 4.0,
             "segmentation": [[2, 2, 4, 2, 4, 4]], "iscrowd": 0},
            {"id": 3, "image_id": 139, "category_id": 18, "bbox": [0, 0, 8, 8], "area": 64.0,
             "segmentation": {"counts": [0, 64], "size": [8, 8]}, "iscrowd": 1},
            {"id": 4, "image_id": 285, "category_id": 3, "bbox": [0, 0, 4, 4], "area": 16.0,
             "segmentation": [[0, 0, 4, 0, 4, 4]], "iscrowd": 0},
        ],
        # Listed out of id order: labels must come out ordered by id.
        "categories": [{"supercategory": "animal", "id": 18, "name": "dog"},
                       {"supercategory": "person", "id": 1, "name": "person"},
                       {"supercategory": "vehicle", "id": 3, "name": "car"}],
    }
    data.update(changes)
    path = tmp_path / "coco" / "annotations" / "instances_val2017.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


def test_coco(tmp_path: Path) -> None:
    path = coco_file(tmp_path)
    for name in ("000000000139.jpg", "000000000285.jpg", "000000000632.jpg"):
        write_image(tmp_path / "coco" / "val2017" / name)
    table = load_coco(path)
    assert table.paths == ["000000000139.jpg", "000000000285.jpg", "000000000632.jpg"]
    assert table.label_names == ["person", "car", "dog"]
    assert table.targets.tolist() == [[1, 0, 1], [0, 1, 0], [0, 0, 0]]
    assert table.root == tmp_path / "coco" / "val2017" and table.source == str(path)
    assert all(table.image_path(i).is_file() for i in range(len(table)))

    assert load_coco(path, include_crowd=False).targets.tolist() == [[1, 0, 0], [0, 1, 0],
                                                                     [0, 0, 0]]
    assert detect_format(path) == "coco"
    # `mlic data stats --option include_crowd=false` passes the option as a string.
    assert load_table({"path": path, "include_crowd": "false"}).targets[0].tolist() == [1, 0, 0]
    raises(["include_crowd='maybe'"], load_coco, path, include_crowd="maybe")
    auto = load_table({"path": str(path), "root": str(tmp_path)})
    assert auto.root == tmp_path and auto.targets.tolist() == table.targets.tolist()


def test_coco_root_falls_back_to_json_folder(tmp_path: Path) -> None:
    path = coco_file(tmp_path)  # no coco/val2017 folder
    assert load_coco(path).root == path.parent


def test_coco_errors(tmp_path: Path) -> None:
    ann = {"id": 7, "image_id": 139, "category_id": 99, "bbox": [0, 0, 1, 1], "iscrowd": 0}
    raises(["instances_val2017.json", "category_id 99"], load_coco, coco_file(tmp_path,
                                                                              annotations=[ann]))
    ann = dict(ann, image_id=4242, category_id=1)
    raises(["instances_val2017.json", "image_id 4242"], load_coco,
           coco_file(tmp_path, annotations=[ann]))
    image = {"id": 139, "file_name": "other.jpg", "height": 8, "width": 8}
    images = [image, dict(image, file_name="again.jpg")]
    raises(["instances_val2017.json", "139", "twice"], load_coco,
           coco_file(tmp_path, images=images))
    images = [image, dict(image, id=140)]
    raises(["instances_val2017.json", "other.jpg"], load_coco, coco_file(tmp_path, images=images))
    raises(["instances_val2017.json", "annotations"], load_coco,
           coco_file(tmp_path, annotations=None))
    raises(["instances_val2017.json", "'name'"], load_coco,
           coco_file(tmp_path, categories=[{"id": 1}]))
    outside = [dict(image, file_name="../../secret.jpg")]
    raises(["instances_val2017.json", "../../secret.jpg", "outside"], load_coco,
           coco_file(tmp_path, images=outside, annotations=[]))
    assert load_coco(coco_file(tmp_path, images=outside, annotations=[]),
                     allow_outside_root=True).paths == ["../../secret.jpg"]
    broken = tmp_path / "broken.json"
    broken.write_text('{"images": [')
    raises(["broken.json", "JSON"], load_coco, broken)


# ---------------------------------------------------------------- VOC

def voc_xml(filename: str | None, objects: list[tuple[str, int]]) -> str:
    name_tag = f"\t<filename>{filename}</filename>\n" if filename else ""
    body = "".join(
        f"\t<object>\n\t\t<name>{name}</name>\n\t\t<pose>Unspecified</pose>\n"
        f"\t\t<truncated>0</truncated>\n\t\t<difficult>{difficult}</difficult>\n"
        f"\t\t<bndbox><xmin>1</xmin><ymin>1</ymin><xmax>7</xmax><ymax>7</ymax></bndbox>\n"
        f"\t</object>\n" for name, difficult in objects)
    return ("<annotation>\n\t<folder>VOC2007</folder>\n" + name_tag +
            "\t<source>\n\t\t<database>The VOC2007 Database</database>\n\t</source>\n"
            "\t<size>\n\t\t<width>8</width>\n\t\t<height>8</height>\n\t\t<depth>3</depth>\n"
            "\t</size>\n\t<segmented>0</segmented>\n" + body + "</annotation>\n")


def voc_folder(tmp_path: Path, ids: list[str] | None = None) -> Path:
    voc = tmp_path / "VOCdevkit" / "VOC2007"
    (voc / "Annotations").mkdir(parents=True)
    (voc / "ImageSets" / "Main").mkdir(parents=True)
    annotations = {
        # chair: clear + difficult -> 1; person only difficult -> -1 by default
        "000005": voc_xml("000005.jpg", [("chair", 0), ("chair", 1), ("person", 1)]),
        # no <filename>: falls back to <id>.jpg; trailing space in a name, as in VOC2012
        "000007": voc_xml(None, [("car ", 0), ("dog", 0), ("dog", 0)]),
        "000009": voc_xml("000009.jpg", [("horse", 1)]),
    }
    for image_id, xml in annotations.items():
        (voc / "Annotations" / f"{image_id}.xml").write_text(xml)
        write_image(voc / "JPEGImages" / f"{image_id}.jpg")
    ids = ids if ids is not None else list(annotations)
    (voc / "ImageSets" / "Main" / "trainval.txt").write_text("".join(f"{i}\n" for i in ids))
    (voc / "ImageSets" / "Main" / "test.txt").write_text("000009\n")
    return voc


def voc_row(**states: int) -> list[int]:
    return [states.get(name, 0) for name in VOC_CLASSES]


def test_voc(tmp_path: Path) -> None:
    voc = voc_folder(tmp_path)
    table = load_voc(voc)
    assert table.label_names == list(VOC_CLASSES) and len(VOC_CLASSES) == 20
    assert VOC_CLASSES[0] == "aeroplane" and VOC_CLASSES[-1] == "tvmonitor"
    assert table.paths == ["000005.jpg", "000007.jpg", "000009.jpg"]
    assert table.targets.tolist() == [voc_row(chair=1, person=-1), voc_row(car=1, dog=1),
                                      voc_row(horse=-1)]
    assert table.root == voc / "JPEGImages"
    assert all(table.image_path(i).is_file() for i in range(len(table)))

    assert load_voc(voc, difficult="positive").targets[:, VOC_CLASSES.index("person")].tolist() \
        == [1, 0, 0]
    negative = load_voc(voc, difficult="negative")
    assert negative.targets.tolist()[0] == voc_row(chair=1)
    assert (negative.targets >= 0).all()
    assert load_voc(voc, split="test").paths == ["000009.jpg"]

    assert detect_format(voc) == "voc"
    assert load_table({"path": voc, "split": "test"}).targets.tolist() == [voc_row(horse=-1)]


def test_voc_errors(tmp_path: Path) -> None:
    voc = voc_folder(tmp_path, ids=["000005", "000404"])
    raises(["000404.xml", "not found"], load_voc, voc)
    (voc / "ImageSets" / "Main" / "trainval.txt").write_text("000005\n000007\n000005\n")
    raises(["trainval.txt", "line 3", "twice"], load_voc, voc)
    (voc / "Annotations" / "000005.xml").write_text(voc_xml("000005.jpg", [("unicorn", 0)]))
    raises(["000005.xml", "unicorn"], load_voc, voc)
    (voc / "Annotations" / "000005.xml").write_text("<annotation><object>")
    raises(["000005.xml", "malformed XML"], load_voc, voc)
    (voc / "Annotations" / "000005.xml").write_text(voc_xml("000005.jpg", [("cat", 2)]))
    raises(["000005.xml", "difficult"], load_voc, voc)
    raises(["val.txt", "'val'", "test, trainval"], load_voc, voc, split="val")
    raises(["difficult='maybe'"], load_voc, voc, difficult="maybe")
    raises(["bad options", "voc"], load_table, {"path": voc, "format": "voc", "spilt": "val"})


# ---------------------------------------------------------------- NUS-WIDE

NUS_IMAGES = ["actor\\0001_2124494179.jpg", "actor\\0002_174174086.jpg",
              "airport\\0001_2218183434.jpg"]
NUS_LABELS = {"airport": [0, 0, 1], "animal": [0, 1, 0], "beach": [1, 0, 1]}


def nus_folder(tmp_path: Path, concepts_in_list_dir: bool = False) -> Path:
    nus = tmp_path / "NUS-WIDE"
    concepts = nus / "ConceptsList" if concepts_in_list_dir else nus
    concepts.mkdir(parents=True)
    (concepts / "Concepts81.txt").write_text("airport\nanimal\nbeach\n")
    (nus / "ImageList").mkdir()
    # The official files were written on Windows: CRLF line ends and backslash paths.
    (nus / "ImageList" / "TrainImagelist.txt").write_bytes(
        "".join(f"{p}\r\n" for p in NUS_IMAGES).encode())
    (nus / "ImageList" / "TestImagelist.txt").write_bytes(b"actor\\0003_1.jpg\r\n")
    (nus / "TrainTestLabels").mkdir()
    for concept, values in NUS_LABELS.items():
        (nus / "TrainTestLabels" / f"Labels_{concept}_Train.txt").write_bytes(
            "".join(f"{v} \r\n" for v in values).encode())
        (nus / "TrainTestLabels" / f"Labels_{concept}_Test.txt").write_text(
            "1\n" if concept == "animal" else "0\n")
    for p in NUS_IMAGES:
        write_image(nus / "Flickr" / p.replace("\\", "/"))
    return nus


def test_nuswide(tmp_path: Path) -> None:
    nus = nus_folder(tmp_path)
    table = load_nuswide(nus)
    assert table.paths == ["actor/0001_2124494179.jpg", "actor/0002_174174086.jpg",
                           "airport/0001_2218183434.jpg"]
    assert table.label_names == ["airport", "animal", "beach"]
    assert table.targets.tolist() == [[0, 0, 1], [0, 1, 0], [1, 0, 1]]
    assert table.root == nus / "Flickr"
    assert all(table.image_path(i).is_file() for i in range(len(table)))
    test = load_nuswide(nus, split="test")
    assert test.paths == ["actor/0003_1.jpg"] and test.targets.tolist() == [[0, 1, 0]]
    assert detect_format(nus) == "nuswide"
    assert load_table(nus).targets.tolist() == table.targets.tolist()


def test_nuswide_concepts_in_concepts_list(tmp_path: Path) -> None:
    assert load_nuswide(nus_folder(tmp_path, True)).label_names == ["airport", "animal", "beach"]


def test_nuswide_errors(tmp_path: Path) -> None:
    nus = nus_folder(tmp_path)
    labels = nus / "TrainTestLabels"
    (labels / "Labels_animal_Train.txt").write_text("0\n1\n")
    raises(["Labels_animal_Train.txt", "2 lines", "3 images"], load_nuswide, nus)
    (labels / "Labels_animal_Train.txt").write_text("0\n1\n7\n")
    raises(["Labels_animal_Train.txt", "line 3", "'7'"], load_nuswide, nus)
    (labels / "Labels_animal_Train.txt").unlink()
    raises(["Labels_animal_Train.txt", "'animal'", "not found"], load_nuswide, nus)
    raises(["split='Val'"], load_nuswide, nus, split="val")
    (nus / "ImageList" / "TrainImagelist.txt").write_text("a\\1.jpg\nb\\2.jpg\na\\1.jpg\n")
    raises(["TrainImagelist.txt", "line 3", "twice"], load_nuswide, nus)
    (nus / "Concepts81.txt").unlink()
    raises(["Concepts81.txt"], load_nuswide, nus)


# ---------------------------------------------------------------- JSON list

def json_list(tmp_path: Path, images: list, classes: list | None = None) -> Path:
    path = tmp_path / "voc_trainval.json"
    path.write_text(json.dumps({"classes": classes or ["cat", "dog", "person"],
                                "images": images}))
    return path


def test_json_list(tmp_path: Path) -> None:
    path = json_list(tmp_path, [
        ["img/a.jpg", ["dog", "person"]],
        ["img/b.png", [0]],
        ["img/c.jpg", []],
        {"path": "img/d.jpg", "labels": [2], "unknown": ["cat"]},
    ])
    for name in ("a.jpg", "b.png", "c.jpg", "d.jpg"):
        write_image(tmp_path / "img" / name)
    table = load_json_list(path)
    assert table.paths == ["img/a.jpg", "img/b.png", "img/c.jpg", "img/d.jpg"]
    assert table.label_names == ["cat", "dog", "person"]
    assert table.targets.tolist() == [[0, 1, 1], [1, 0, 0], [0, 0, 0], [-1, 0, 1]]
    assert table.root == tmp_path and table.source == str(path)
    assert all(table.image_path(i).is_file() for i in range(len(table)))
    assert detect_format(path) == "json"
    assert load_table(path).targets.tolist() == table.targets.tolist()


def test_json_list_errors(tmp_path: Path) -> None:
    raises(["voc_trainval.json", "images[1]", "index 3 out of range"], load_json_list,
           json_list(tmp_path, [["a.jpg", [0]], ["b.jpg", [3]]]))
    raises(["voc_trainval.json", "images[0]", "'horse'"], load_json_list,
           json_list(tmp_path, [["a.jpg", ["horse"]]]))
    raises(["voc_trainval.json", "images[0]", "'wolf'"], load_json_list,
           json_list(tmp_path, [{"path": "a.jpg", "labels": [], "unknown": ["wolf"]}]))
    raises(["voc_trainval.json", "images[1]", "a.jpg"], load_json_list,
           json_list(tmp_path, [["a.jpg", [0]], ["./a.jpg", [1]]]))
    raises(["voc_trainval.json", "images[0]", "expected [path, labels]"], load_json_list,
           json_list(tmp_path, [["a.jpg", [0], "extra"]]))
    raises(["voc_trainval.json", "'dog'", "both"], load_json_list,
           json_list(tmp_path, [{"path": "a.jpg", "labels": ["dog"], "unknown": [1]}]))
    raises(["voc_trainval.json", "True"], load_json_list, json_list(tmp_path, [["a.jpg", [True]]]))
    raises(["voc_trainval.json", "duplicate label names"], load_json_list,
           json_list(tmp_path, [], classes=["cat", "cat"]))
    raises(["voc_trainval.json", "/etc/passwd", "outside"], load_json_list,
           json_list(tmp_path, [["/etc/passwd", []]]))


# ---------------------------------------------------------------- OpenImages

OI_LABELS = """ImageID,Source,LabelName,Confidence
000002b66c9c498e,verification,/m/014sv8,1
000002b66c9c498e,verification,/m/0284d,0
000002b66c9c498e,crowdsource-verification,/m/0284d,1
000002b97e5471a0,verification,/m/05s2s,0
000002b97e5471a0,verification,/m/0c9ph5,1
000002c707c9895e,verification,/m/014sv8,0
"""
OI_DESCRIPTIONS = [("/m/011k07", "Tortoise"), ("/m/014sv8", "Human eye"),
                   ("/m/0284d", "Dairy Product"), ("/m/05s2s", "Plant"),
                   ("/m/0c9ph5", "Flower"), ("/m/0c9ph6", "Plant")]


def oi_files(tmp_path: Path, header: bool = True,
             name: str = "oidv6-class-descriptions.csv") -> Path:
    folder = tmp_path / "openimages"
    folder.mkdir(exist_ok=True)
    lines = ["LabelName,DisplayName"] if header else []
    lines += [f"{mid},{display}" for mid, display in OI_DESCRIPTIONS]
    (folder / name).write_text("\n".join(lines) + "\n")
    labels = folder / "oidv6-train-annotations-human-imagelabels.csv"
    labels.write_text(OI_LABELS)
    return labels


def test_openimages(tmp_path: Path) -> None:
    labels = oi_files(tmp_path)
    write_image(labels.parent / "000002b66c9c498e.jpg")
    table = load_openimages(labels)  # descriptions found next to the labels file
    assert table.paths == ["000002b66c9c498e.jpg", "000002b97e5471a0.jpg", "000002c707c9895e.jpg"]
    # Used classes in description order; "Plant" is two MIDs, so it carries its MID.
    assert table.label_names == ["Human eye", "Dairy Product", "Plant (/m/05s2s)", "Flower"]
    assert table.targets.tolist() == [[1, 1, -1, -1], [-1, -1, 0, 1], [0, -1, -1, -1]]
    assert table.root == labels.parent and table.source == str(labels)
    assert table.image_path(0).is_file()

    every = load_openimages(labels, all_classes=True, image_ext=".png")
    assert every.label_names == ["Tortoise", "Human eye", "Dairy Product", "Plant (/m/05s2s)",
                                 "Flower", "Plant (/m/0c9ph6)"]
    assert every.targets[:, [0, 5]].tolist() == [[-1, -1]] * 3
    assert every.paths[0] == "000002b66c9c498e.png"

    assert detect_format(labels) == "openimages"
    assert load_table(labels).targets.tolist() == table.targets.tolist()


def test_openimages_headerless_boxable_descriptions(tmp_path: Path) -> None:
    labels = oi_files(tmp_path, header=False, name="class-descriptions-boxable.csv")
    table = load_openimages(labels, classes=labels.parent / "class-descriptions-boxable.csv")
    assert table.label_names == ["Human eye", "Dairy Product", "Plant (/m/05s2s)", "Flower"]
    assert table.targets.tolist() == [[1, 1, -1, -1], [-1, -1, 0, 1], [0, -1, -1, -1]]


def test_openimages_errors(tmp_path: Path) -> None:
    labels = oi_files(tmp_path)
    with open(labels, "a") as f:
        f.write("000002c707c9895e,verification,/m/0bogus,1\n")
    raises(["imagelabels.csv", "line 8", "'/m/0bogus'"], load_openimages, labels)
    labels.write_text(OI_LABELS.replace("/m/05s2s,0", "/m/05s2s,0.5"))
    raises(["imagelabels.csv", "line 5", "'0.5'"], load_openimages, labels)
    labels.write_text("ImageID,Source,LabelName\n0001,verification,/m/05s2s\n")
    raises(["imagelabels.csv", "Confidence"], load_openimages, labels)
    labels.write_text(OI_LABELS)
    oi_files(tmp_path, header=False, name="class-descriptions-boxable.csv")
    raises(["imagelabels.csv", "classes", "class-descriptions-boxable.csv"], load_openimages,
           labels)
    for p in labels.parent.glob("*class-descriptions*"):
        p.unlink()
    raises(["imagelabels.csv", "classes", "none found"], load_openimages, labels)
    raises(["missing.csv", "not found"], load_openimages, labels,
           classes=tmp_path / "missing.csv")
    twice = tmp_path / "twice.csv"
    twice.write_text("/m/01,A\n/m/01,B\n")
    raises(["twice.csv", "/m/01", "twice"], load_openimages, labels, classes=twice)


def test_openimages_keep_list_drops_other_classes_with_a_count(tmp_path: Path) -> None:
    labels = oi_files(tmp_path)  # the descriptions name 6 classes; the labels use 4 of them
    with open(labels, "a") as f:  # a class the descriptions do not know: dropped, not an error
        f.write("000002c707c9895e,verification,/m/0unknown,1\n"
                "000003,verification,/m/0284d,1\n")  # an image with dropped labels only
    boxable = labels.parent / "class-descriptions-boxable.csv"
    boxable.write_text("/m/014sv8,Human eye\n/m/0c9ph5,Flower\n/m/011k07,Tortoise\n")
    descriptions = labels.parent / "oidv6-class-descriptions.csv"
    table = load_openimages(labels, classes=descriptions, keep=boxable)
    assert table.label_names == ["Human eye", "Flower"]  # description order, used classes
    assert table.paths == ["000002b66c9c498e.jpg", "000002b97e5471a0.jpg", "000002c707c9895e.jpg"]
    assert table.targets.tolist() == [[1, -1], [-1, 1], [0, -1]]
    assert table.extra["notes"] == [
        "kept 3 of 6 classes (oidv6-class-descriptions.csv); dropped 5 label rows of 3 classes "
        "not in class-descriptions-boxable.csv; 1 images with labels of those classes only are "
        "left out"]
    # a text list of MIDs (oidv6-classes-trainable.txt), a YAML list, and all_classes
    trainable = labels.parent / "oidv6-classes-trainable.txt"
    trainable.write_text("/m/014sv8\n/m/0284d\n")
    assert load_openimages(labels, classes=descriptions, keep=trainable).label_names == [
        "Human eye", "Dairy Product"]
    listed = load_table({"path": labels, "classes": descriptions, "keep": ["/m/011k07", "/m/0c9ph5"],
                         "all_classes": True})
    assert listed.label_names == ["Tortoise", "Flower"]
    assert listed.paths == ["000002b97e5471a0.jpg"] and listed.targets.tolist() == [[-1, 1]]
    # a kept class the descriptions do not name cannot be a column
    raises(["imagelabels.csv", "1 classes of the keep option", "'/m/0nameless'"], load_openimages,
           labels, classes=descriptions, keep=["/m/014sv8", "/m/0nameless"])
    # without keep, an unknown label stays an error
    raises(["imagelabels.csv", "'/m/0unknown'"], load_openimages, labels, classes=descriptions)


def test_the_paper_openimages_configs_keep_the_boxable_classes() -> None:
    import yaml
    for name in ("openimages_effv2s_mld_aam.yaml", "openimages_effv2s_asl_pretrain.yaml"):
        path = Path(__file__).parent.parent / "configs" / "paper" / name
        data = yaml.safe_load(path.read_text())["data"]
        for split in ("train", "val"):
            assert data[split]["keep"].endswith("class-descriptions-boxable.csv"), (name, split)
            assert data[split]["classes"].endswith("oidv6-class-descriptions.csv"), (name, split)
        assert "keep" in path.read_text().split("\nname:")[0]  # the header explains it


# ---------------------------------------------------------------- CSV

CSV_TEXT = """image,labels,unknown
cats/001.jpg,cat|sofa,
cats/002.jpg,,cat
"dogs/003, the big one.jpg",dog | person,sofa
"""


def test_csv(tmp_path: Path) -> None:
    path = tmp_path / "train.csv"
    path.write_text(CSV_TEXT)
    write_image(tmp_path / "cats" / "001.jpg")
    table = load_csv(path)
    assert table.paths == ["cats/001.jpg", "cats/002.jpg", "dogs/003, the big one.jpg"]
    assert table.label_names == ["cat", "dog", "person", "sofa"]
    assert table.targets.tolist() == [[1, 0, 0, 1], [-1, 0, 0, 0], [0, 1, 1, -1]]
    assert table.root == tmp_path and table.image_path(0).is_file()

    classes = tmp_path / "classes.txt"
    classes.write_text("sofa\nperson\ndog\ncat\nbird\n")
    ordered = load_csv(path, classes=classes)
    assert ordered.label_names == ["sofa", "person", "dog", "cat", "bird"]
    assert ordered.targets.tolist() == [[1, 0, 0, 1, 0], [0, 0, 0, -1, 0], [-1, 1, 1, 0, 0]]
    assert load_csv(path, classes=["cat", "dog", "person", "sofa", "x"]).num_labels == 5

    two_columns = tmp_path / "two.csv"
    two_columns.write_text("image,labels\na.jpg,x;y\nb.jpg,\n")
    assert load_csv(two_columns, separator=";").targets.tolist() == [[1, 1], [0, 0]]
    assert detect_format(path) == "csv"
    spec = {"path": path, "classes": ["cat", "dog", "person", "sofa"]}
    assert load_table(spec).targets.tolist() == table.targets.tolist()


def test_csv_round_trip(tmp_path: Path) -> None:
    table = LabelTable(["a/1.jpg", "b.jpg", "c d.jpg"], ["zebra", "ant", "never"],
                       [[1, -1, 0], [0, 0, 0], [1, 1, 0]], tmp_path)
    save_csv(table, tmp_path / "out.csv", classes_path=tmp_path / "out.txt")
    back = load_csv(tmp_path / "out.csv", classes=tmp_path / "out.txt")
    assert back.paths == table.paths and back.label_names == table.label_names
    assert back.targets.tolist() == table.targets.tolist()
    # Without unknowns there is no third column.
    save_csv(table.subset([1, 2]), tmp_path / "known.csv")
    assert (tmp_path / "known.csv").read_text().splitlines() == [
        "image,labels", "b.jpg,", "c d.jpg,zebra|ant"]
    raises(["bad.csv", "a|b"], save_csv, LabelTable(["x.jpg"], ["a|b"], [[1]]),
           tmp_path / "bad.csv")


def test_csv_errors(tmp_path: Path) -> None:
    path = tmp_path / "train.csv"
    path.write_text(CSV_TEXT)
    raises(["train.csv", "line 2", "'cat'", "classes.txt"], load_csv, path,
           classes=_write(tmp_path / "classes.txt", "dog\nperson\nsofa\n"))
    path.write_text("image,labels,unknown\na.jpg,cat,\nb.jpg,dog,sofa\n")
    raises(["train.csv", "line 3", "'sofa'"], load_csv, path, classes=["cat", "dog", "person"])
    path.write_text("image,labels\na.jpg,x\nb.jpg,y\n./a.jpg,z\n")
    raises(["train.csv", "line 4", "twice", "line 2"], load_csv, path)
    path.write_text("path,labels\na.jpg,x\n")
    raises(["train.csv", "header"], load_csv, path)
    path.write_text("image,labels,unknown\na.jpg,x,x\n")
    raises(["train.csv", "line 2", "'x'", "both"], load_csv, path)
    path.write_text("image,labels\na.jpg,x,y\n")
    raises(["train.csv", "line 2", "3 fields"], load_csv, path)
    path.write_text("image,labels\n../a.jpg,x\n")
    raises(["train.csv", "line 2", "../a.jpg", "outside"], load_csv, path)
    assert load_csv(path, allow_outside_root=True).paths == ["../a.jpg"]
    raises(["classes.txt", "'dog'", "twice"], load_csv, path,
           classes=_write(tmp_path / "classes.txt", "dog\ndog\n"))
    raises(["nothing.csv", "not found"], load_csv, tmp_path / "nothing.csv")


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_load_table_errors(tmp_path: Path) -> None:
    raises(["nope.csv", "does not exist"], load_table, tmp_path / "nope.csv")
    raises(["unknown format 'yolo'"], load_table, {"path": tmp_path, "format": "yolo"})
    assert np.array_equal(load_table({"path": _write(tmp_path / "e.csv", "image,labels\n"),
                                      "format": "csv"}).targets, np.zeros((0, 0)))
