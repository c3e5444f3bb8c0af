"""The Describer: ordered results, per-item errors, batching, background decoding."""

import pytest
from media_factory import make_gif, make_image, make_video

from tarsier import TarsierError
from tarsier.engine.describer import Describer, DescribeRequest
from tarsier.engine.settings import GenerationSettings


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    folder = tmp_path_factory.mktemp("media")
    corrupt = folder / "corrupt.mp4"
    corrupt.write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"garbage" * 50)
    return {
        "video": make_video(folder / "clip.mp4", 30),
        "gif": make_gif(folder / "anim.gif", 5),
        "image": make_image(folder / "still.png", 3),
        "corrupt": corrupt,
        "missing": folder / "missing.mp4",
    }


@pytest.fixture(scope="module")
def describer(fast_checkpoint):
    settings = GenerationSettings(max_new_tokens=6)
    return Describer.from_pretrained(str(fast_checkpoint), device="cpu", max_n_frames=4, batch_size=2, generation=settings)


def test_results_come_back_in_order_with_per_item_errors(describer, media):
    order = ["video", "corrupt", "gif", "missing", "image"]
    requests = [DescribeRequest(name, media[name]) for name in order]
    results = list(describer.run(requests))
    assert [r.key for r in results] == order
    errors = {r.key: r.error for r in results}
    assert errors["video"] is None and errors["gif"] is None and errors["image"] is None
    assert "corrupt.mp4" in errors["corrupt"] and "missing.mp4" in errors["missing"]
    assert all("\n" not in e for e in errors.values() if e)
    by_key = {r.key: r for r in results}
    assert by_key["video"].frame_indices == [0, 10, 19, 29]
    assert by_key["image"].frame_indices == [0]
    assert by_key["image"].prompt == "<image>\nDescribe the image in detail."
    assert by_key["video"].prompt == "<video>\nDescribe the video in detail."


def test_batched_results_equal_one_at_a_time(describer, media):
    requests = [DescribeRequest(name, media[name]) for name in ("video", "gif", "image")]
    batched = [r.text for r in describer.run(requests)]
    alone = Describer(describer.model, describer.processor, describer.generation, batch_size=1, num_workers=0)
    assert [r.text for r in alone.run(requests)] == batched
    assert all(batched)


def test_streaming_one_request_gives_the_same_text(describer, media):
    request = DescribeRequest("video", media["video"], prompt="<video>\nWhat happens?")
    streamed = "".join(describer.stream(request))
    assert streamed == next(describer.run([request])).text


def test_bad_prompt_is_reported_for_that_item(describer, media):
    request = DescribeRequest("x", media["image"], prompt="<image><image>\ntwo?")
    (result,) = describer.run([request])
    assert result.text is None and "2 <image> placeholders" in result.error
    with pytest.raises(TarsierError, match="placeholders"):
        list(describer.stream(request))


def test_one_call_describe_matches_the_describer(fast_checkpoint, media, describer):
    from tarsier import describe

    text = describe(media["video"], model=str(fast_checkpoint), device="cpu", max_n_frames=4, max_new_tokens=6)
    assert text == next(describer.run([DescribeRequest("v", media["video"])])).text
    with pytest.raises(TarsierError, match="missing.mp4"):
        describe(media["missing"], model=str(fast_checkpoint), device="cpu")


def test_questions_about_one_video_decode_and_prefill_it_once_and_match_an_uncached_run(describer, media, monkeypatch):
    """QA order (videos interleaved): each video is decoded once and its frames' prefix prefilled
    once; answers equal a Describer without caches, item for item, in request order."""
    questions = ["What happens?", "What colour is it?", "Is anything moving?"]
    requests = [DescribeRequest(f"{name}{n}", media[name], prompt=f"<video>\n{q}")
                for n, q in enumerate(questions) for name in ("video", "gif")]
    fresh = Describer(describer.model, describer.processor, describer.generation, batch_size=2, num_workers=0)
    encodings = []
    features = describer.model.get_image_features
    monkeypatch.setattr(describer.model, "get_image_features", lambda *a, **k: encodings.append(1) or features(*a, **k))
    cache = fresh.batch.prefix_cache
    results = list(fresh.run(requests))
    assert [r.key for r in results] == [r.key for r in requests]
    assert len(encodings) == 2  # one vision-tower run per video, not per question
    assert (fresh.frames_cache.stats.misses, fresh.frames_cache.stats.hits) == (2, 4)
    assert (cache.stats.misses, cache.stats.hits) == (2, 4)
    uncached = Describer(describer.model, describer.processor, describer.generation, batch_size=2, num_workers=0,
                         cache_bytes=0)
    assert [r.text for r in uncached.run(requests)] == [r.text for r in results]
    assert len(encodings) == 2 + 6 and all(r.text for r in results)


def test_a_video_whose_questions_span_two_windows_is_prefilled_once_and_no_other_prefix_is_kept(describer, media):
    """Windows of 4 (batch 2): the video's first question ends window one, its others open window
    two, so its prefix is kept for them; a video asked once and not after is not kept at all."""
    def ask(name, count):
        return [DescribeRequest(f"{name}{n}", media[name], prompt=f"<video>\nQuestion {n}?") for n in range(count)]

    fresh = Describer(describer.model, describer.processor, describer.generation, batch_size=2, num_workers=0)
    cache = fresh.batch.prefix_cache
    results = list(fresh.run(ask("gif", 3) + ask("video", 3)))
    assert all(r.text for r in results)
    assert (cache.stats.misses, cache.stats.hits, len(cache)) == (2, 4, 2)
    fresh = Describer(describer.model, describer.processor, describer.generation, batch_size=2, num_workers=0)
    cache = fresh.batch.prefix_cache
    list(fresh.run(ask("gif", 3) + ask("video", 1)))
    assert (cache.stats.misses, cache.stats.hits, len(cache)) == (2, 2, 1)
