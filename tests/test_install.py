"""The install itself: dependencies that exist on the platform at hand."""

from __future__ import annotations



from conftest import IMAGE_COUNT, ROOT, TEXT_COUNT

ITEMS = IMAGE_COUNT + TEXT_COUNT


# -- install where faiss-gpu has no wheels ---------------------------------------------------
def test_faiss_dependency_follows_the_platform():
    import tomllib

    from packaging.markers import Marker
    from packaging.requirements import Requirement

    deps = [Requirement(d) for d in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]]
    faiss = [d for d in deps if d.name.startswith("faiss")]

    def chosen(system: str, machine: str) -> set[str]:
        env = {"sys_platform": system, "platform_machine": machine, "platform_system": system.capitalize()}
        return {d.name for d in faiss if d.marker is None or Marker(str(d.marker)).evaluate(env)}

    assert chosen("linux", "x86_64") == {"faiss-gpu"}
    assert chosen("linux", "aarch64") == chosen("darwin", "arm64") == chosen("darwin", "x86_64") == {"faiss-cpu"}
