"""A fake root for collector tests: real files under a temp dir that the doctor's `Env(root=...)`
reads as `/`, and stand-in executables on its PATH (no GPU or systemd here)."""

from __future__ import annotations

from pathlib import Path

from gptoss_doctor.collect import Env


class Box:
    """write(path, text) puts a file at a box path, tool(name, script) an executable on PATH."""

    timeout_s = 2.0

    def __init__(self, root: Path, path: str = "/usr/bin"):
        self.root = root
        (root / "usr/bin").mkdir(parents=True)
        self.environ = {"PATH": path}

    def write(self, box_path: str, text: str, mode: int = 0o644) -> Path:
        p = self.root / box_path.lstrip("/")
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
        p.chmod(mode)
        return p

    def tool(self, name: str, body: str, where: str = "/usr/bin") -> None:
        self.write(f"{where}/{name}", f"#!/bin/sh\n# stand-in for {name} (tests: no GPU here)\n{body}\n", 0o755)

    def env(self, timeout_s: float | None = None, **extra) -> Env:
        return Env(root=self.root, environ={**self.environ, **extra}, timeout_s=timeout_s or self.timeout_s)
