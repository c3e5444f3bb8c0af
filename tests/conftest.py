"""Shared fixtures: random checkpoints in the official layout (built once per test session)."""

import signal

import pytest
import torch

from tarsier.testing import build_random_checkpoint

# A suite started in the background of a non-interactive shell (`nohup pytest &`) inherits SIGINT
# ignored, and so would every command the tests start and then stop with Ctrl-C. Caught here, it is
# back to its default in those commands (exec resets a caught signal, not an ignored one).
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """Real geometry (336 px, 601 positions per frame), tiny widths."""
    return build_random_checkpoint(tmp_path_factory.mktemp("tiny-checkpoint"), "tiny")


@pytest.fixture(scope="session")
def fast_checkpoint(tmp_path_factory):
    """56 px frames (21 positions per frame) for tests that generate a lot."""
    return build_random_checkpoint(tmp_path_factory.mktemp("fast-checkpoint"), "tiny-fast")


@pytest.fixture(scope="session")
def long_video(tmp_path_factory):
    """A 60 s, 1500-frame 64x48 H.264 mp4 with x264's default GOPs and B-frames; frame i shows i."""
    from media_factory import make_video

    return make_video(tmp_path_factory.mktemp("media") / "long.mp4", 1500, fps=25)


@pytest.fixture(scope="session")
def clip_25fps(tmp_path_factory):
    """A 4 s, 100-frame 64x48 H.264 mp4 at 25 fps; frame i shows i."""
    from media_factory import make_video

    return make_video(tmp_path_factory.mktemp("media") / "clip.mp4", 100, fps=25)


@pytest.fixture(scope="session")
def tarsier2_checkpoint(tmp_path_factory):
    """A tiny Tarsier2 checkpoint in the official layout (Qwen2-VL geometry, tiny widths)."""
    from tarsier.testing import build_random_tarsier2_checkpoint

    return build_random_tarsier2_checkpoint(tmp_path_factory.mktemp("tarsier2-checkpoint"))


@pytest.fixture(autouse=True)
def one_thread_for_tiny_training(request):
    """Tests under train/ and shapes/ train tiny models, which gain nothing from intra-op threads;
    on shared cores spinning OpenMP threads slow every step down many times. Other tests keep
    their thread count."""
    if request.path.parent.name not in ("train", "shapes"):
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
