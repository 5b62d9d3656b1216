"""Reading py-spy's collapsed stacks (`--format raw`): top tables and a flame graph (SVG).

    python bench/flame.py STACKS.txt [--svg OUT.svg] [--top 25]

Each line of a raw file is one stack, outermost frame first, frames separated by `;`, then a space
and the number of samples. `Frame` names are `function (file)` (py-spy's `--nolineno`).
"""

from __future__ import annotations

import argparse
import html
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

# Which package a frame belongs to, from its file as py-spy prints it.
_PACKAGES = (
    "sqlalchemy",
    "sqlmodel",
    "pydantic_core",
    "pydantic",
    "fastapi",
    "starlette",
    "uvicorn",
    "asyncio",
    "concurrent",
    "threading",
    "structlog",
    "logging",
    "joserfc",
    "orjson",
    "sqlite3",
    "gateway",
    "fhir_profiles",
    "auth",
    "adapters",
    "httpx",
    "httpcore",
)


def read_stacks(path: Path) -> Counter[tuple[str, ...]]:
    stacks: Counter[tuple[str, ...]] = Counter()
    for line in path.read_text(encoding="utf-8").splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            stacks[tuple(stack.split(";"))] += int(count)
    return stacks


def package_of(frame: str) -> str:
    where = frame.rpartition("(")[2].rstrip(")")
    parts = where.replace("\\", "/").split("/")
    for part in parts:
        name = part.removesuffix(".py")
        if name in _PACKAGES:
            return name
    return "other" if len(parts) > 1 else where.removesuffix(".py") or "other"


def _is_thread_root(frame: str) -> bool:
    # py-spy's first frame of a stack may name the process or thread: not a function.
    return frame.startswith(("process ", "Thread "))


def top_tables(stacks: Counter[tuple[str, ...]], top: int = 25) -> str:
    total = sum(stacks.values()) or 1
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    packages: Counter[str] = Counter()
    for stack, count in stacks.items():
        frames = [frame for frame in stack if not _is_thread_root(frame)]
        if not frames:
            continue
        own[frames[-1]] += count
        packages[package_of(frames[-1])] += count
        for frame in set(frames):
            inclusive[frame] += count
    lines = [f"{total} busy samples"]
    for title, counter in (("self time by package", packages), ("self time", own), ("inclusive", inclusive)):
        lines.append(f"\n{title}:")
        for frame, count in counter.most_common(top):
            lines.append(f"  {100 * count / total:5.1f}%  {frame}")
    return "\n".join(lines)


@dataclass
class _Node:
    name: str
    count: int = 0
    children: dict[str, _Node] = field(default_factory=dict)


def flame_svg(stacks: Counter[tuple[str, ...]], title: str, width: int = 1600) -> str:
    """A static icicle-style flame graph: root on top, width by samples, title text on hover."""
    root = _Node("all")
    for stack, count in stacks.items():
        node = root
        node.count += count
        for frame in stack:
            node = node.children.setdefault(frame, _Node(frame))
            node.count += count
    row = 16
    boxes: list[str] = []
    depth_seen = 0

    def draw(node: _Node, x: float, depth: int) -> None:
        nonlocal depth_seen
        share = node.count / max(root.count, 1)
        w = share * width
        if w < 0.5:
            return
        depth_seen = max(depth_seen, depth)
        hue = 10 + sum(map(ord, package_of(node.name))) % 50
        label = html.escape(node.name)
        text = html.escape(node.name[: int(w / 7)]) if w > 30 else ""
        boxes.append(
            f"<g><title>{label} ({100 * share:.1f}%)</title>"
            f'<rect x="{x:.1f}" y="{24 + depth * row}" width="{w:.1f}" height="{row - 1}" '
            f'fill="hsl({hue},80%,60%)"/>'
            f'<text x="{x + 2:.1f}" y="{24 + depth * row + 11}">{text}</text></g>'
        )
        offset = x
        for child in sorted(node.children.values(), key=lambda c: -c.count):
            draw(child, offset, depth + 1)
            offset += child.count / max(root.count, 1) * width

    draw(root, 0.0, 0)
    height = 40 + (depth_seen + 1) * row
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'font-family="monospace" font-size="11">'
        f'<text x="4" y="15" font-size="13">{html.escape(title)}</text>{"".join(boxes)}</svg>\n'
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("stacks", type=Path)
    parser.add_argument("--svg", type=Path)
    parser.add_argument("--top", type=int, default=25)
    arguments = parser.parse_args()
    stacks = read_stacks(arguments.stacks)
    print(top_tables(stacks, arguments.top))
    if arguments.svg:
        arguments.svg.write_text(flame_svg(stacks, arguments.stacks.name), encoding="utf-8")


if __name__ == "__main__":
    main()
