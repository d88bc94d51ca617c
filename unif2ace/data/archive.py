"""Images read in place: members of tar archives, frames of video files, and the index that
finds an image by name under folders and inside archives. Used by source specs
(unif2ace/data/spec.py); ``open_image`` (unif2ace/data/sources.py) reads any object here
through its ``read() -> bytes``.

    idx = ImageIndex("/data/faces", dirs=["images"], tar_globs=["shards/*.tar"])
    ref = idx.find("00012")           # an absolute path, an ArchiveMember, or None
"""
from __future__ import annotations

import glob
import tarfile
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ArchiveMember:
    """An image inside a tar file, read in place (offset and size from the tar's index)."""

    archive: str
    name: str
    offset: int
    size: int

    def read(self) -> bytes:
        with open(self.archive, "rb") as f:
            f.seek(self.offset)
            data = f.read(self.size)
        if len(data) != self.size:
            raise OSError(f"{self.archive}: member {self.name} cut short ({len(data)} of {self.size} bytes)")
        return data

    def __str__(self) -> str:
        return f"{self.archive}:{self.name}"


@dataclass(frozen=True)
class VideoFrame:
    """Frame ``index`` of a video file, decoded with OpenCV when read."""

    video: str
    index: int

    def read(self) -> bytes:
        try:
            import cv2
        except ImportError:
            raise OSError("video frames need OpenCV (pip install opencv-python-headless)") from None
        if not Path(self.video).is_file():
            raise FileNotFoundError(self.video)
        cap = cv2.VideoCapture(self.video)
        try:
            cap.set(cv2.CAP_PROP_POS_FRAMES, self.index)
            ok, frame = cap.read()
        finally:
            cap.release()
        if not ok:
            raise OSError(f"{self.video}: no frame {self.index}")
        ok, png = cv2.imencode(".png", frame)
        return png.tobytes()

    def __str__(self) -> str:
        return f"{self.video}#frame={self.index}"


_IMAGE_EXT = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")


class ImageIndex:
    """Finds an image by name under folders and inside tar archives (indexed on first use)."""

    def __init__(self, root: str | Path, dirs: list[str], tar_globs: list[str], join_on: str = "stem"):
        self.root = Path(root)
        self.dirs = [self.root / d for d in dirs]
        self.tars = [p for g in tar_globs for p in sorted(glob.glob(str(self.root / g)))]
        self.join_on = join_on
        self._members: dict[str, ArchiveMember] | None = None
        self._by_tar: dict[str, dict[str, ArchiveMember]] = {}

    def tar_members(self, path: str) -> dict[str, ArchiveMember]:
        if path not in self._by_tar:
            with tarfile.open(path) as t:  # headers only: the index costs one pass over them
                self._by_tar[path] = {m.name: ArchiveMember(path, m.name, m.offset_data, m.size)
                                      for m in t.getmembers() if m.isfile()}
        return self._by_tar[path]

    def members(self) -> dict[str, ArchiveMember]:
        if self._members is None:
            self._members = {}
            for p in self.tars:
                for name, m in self.tar_members(p).items():
                    if name.lower().endswith(_IMAGE_EXT):
                        self._members.setdefault(join_key(name, self.join_on), m)
                        self._members.setdefault(name, m)
        return self._members

    def find(self, ref: str) -> str | ArchiveMember | None:
        p = Path(ref).expanduser()
        if p.is_absolute():
            return str(p)
        names = [ref] if Path(ref).suffix else [ref + e for e in _IMAGE_EXT]
        for d in self.dirs or [self.root]:
            for n in names:
                if (d / n).is_file():
                    return str((d / n).absolute())
        if self.tars:
            m = self.members()
            hit = m.get(ref) or m.get(join_key(ref, self.join_on))
            if hit is not None:
                return hit
        return None


def join_key(value: str, how: str) -> str:
    """The key rows of different tables meet on: the full path, the file name, or its stem."""
    value = str(value).replace("\\", "/")
    if how == "path":
        return value
    name = value.rsplit("/", 1)[-1]
    if how == "name":
        return name
    return name.rsplit(".", 1)[0] if name.lower().endswith(_IMAGE_EXT) else name
