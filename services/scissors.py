"""Edge-snapping polygons, as CVAT's intelligent scissors: OpenCV's ``segmentation.IntelligentScissorsMB``
(livewire: the cheapest path along image edges between two clicks).

``applyImage`` (the edge features of the whole photo) is the slow part, so a prepared tool is kept per image in a
small LRU (``ScissorsCache``, owned by the Workbench); ``buildMap`` (the costs from one click) is kept for the
last click of each image, so that the next click's segment costs one ``getContour``. Photos larger than
MAX_PIXELS are worked on downscaled and the path is scaled back."""

from __future__ import annotations

import math
import threading
from collections import OrderedDict

import cv2
import numpy as np

MAX_PIXELS = 1_000_000  # the edge features are computed on at most this many pixels
MAX_POINTS = 200  # clicks of one polygon
CANNY_LOW, CANNY_HIGH = 32, 100  # OpenCV's sample and CVAT use these edge features
GRADIENT_LIMIT = 200


class Scissors:
    """The intelligent scissors prepared for one RGB photo."""

    def __init__(self, image: np.ndarray, max_pixels: int = MAX_PIXELS):
        height, width = image.shape[:2]
        self.width, self.height = width, height
        self.scale = min(1.0, math.sqrt(max_pixels / float(width * height)))
        bgr = np.ascontiguousarray(image[:, :, ::-1])
        if self.scale < 1.0:
            size = (max(1, round(width * self.scale)), max(1, round(height * self.scale)))
            bgr = cv2.resize(bgr, size, interpolation=cv2.INTER_AREA)
        self.work_width, self.work_height = bgr.shape[1], bgr.shape[0]
        self.tool = cv2.segmentation.IntelligentScissorsMB()
        self.tool.setEdgeFeatureCannyParameters(CANNY_LOW, CANNY_HIGH)
        self.tool.setGradientMagnitudeMaxLimit(GRADIENT_LIMIT)
        self.tool.applyImage(bgr)
        self.source = None  # the point (work pixels) buildMap was last run from
        self.lock = threading.Lock()  # one tool: one map at a time

    def _work(self, point) -> tuple[int, int]:
        x, y = point
        return (min(self.work_width - 1, max(0, int(round(x * self.scale)))),
                min(self.work_height - 1, max(0, int(round(y * self.scale)))))

    def segment(self, start, end) -> list[list[float]]:
        """The edge path from ``start`` to ``end`` ((x, y) image pixels), both included, in image pixels."""
        source, target = self._work(start), self._work(end)
        with self.lock:
            if self.source != source:
                self.tool.buildMap(source)
                self.source = source
            contour = self.tool.getContour(target)
        points = contour.reshape(-1, 2).astype(np.float64) / self.scale
        path = [[float(start[0]), float(start[1])]]
        path += [[round(float(x), 1), round(float(y), 1)] for x, y in points[1:-1]]
        path.append([float(end[0]), float(end[1])])
        return path

    def path(self, points, closed: bool = False) -> list[list[float]]:
        """The polyline through the clicked ``points`` ((x, y) image pixels), each segment along the edges; with
        ``closed`` the last point is joined back to the first the same way."""
        points = [tuple(p) for p in points]
        if len(points) < 2:
            return [[float(x), float(y)] for x, y in points]
        pairs = list(zip(points, points[1:])) + ([(points[-1], points[0])] if closed else [])
        out: list[list[float]] = []
        for start, end in pairs:
            part = self.segment(start, end)
            out.extend(part if not out else part[1:])
        if closed and len(out) > 1 and out[-1] == out[0]:
            out.pop()
        return out


class ScissorsCache:
    """Prepared scissors per image id, the ``keep`` most recently used (thread-safe)."""

    def __init__(self, keep: int = 4):
        self.keep = keep
        self._items: OrderedDict[int, Scissors] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, image_id: int, load_image) -> Scissors:
        with self._lock:
            if image_id in self._items:
                self._items.move_to_end(image_id)
                return self._items[image_id]
        scissors = Scissors(load_image())  # outside the lock: applyImage takes a while
        with self._lock:
            self._items[image_id] = scissors
            self._items.move_to_end(image_id)
            while len(self._items) > self.keep:
                self._items.popitem(last=False)
        return scissors

    def forget(self, image_id: int) -> None:
        with self._lock:
            self._items.pop(image_id, None)
