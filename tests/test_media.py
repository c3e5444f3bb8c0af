"""Media layer: which frames are sampled, how they come out, and how bad input is reported.

Every generated frame shows its own index (see media_factory), so each test checks the exact frames
returned against the indices reported and against the reference sampling rule.
"""

import struct
import subprocess
import sys

import av
import numpy as np
import pytest
from media_factory import (
    index_frame,
    make_audio_only,
    make_empty_video,
    make_frame_folder,
    make_gif,
    make_image,
    make_video,
    read_frame_index,
)
from PIL import Image

from tarsier import media
from tarsier.errors import MediaError
from tarsier.media import load_frames, media_kind, sample_frame_indices, write_video


def reference_indices(total, n, start_frame=0):
    """The reference rule, written out independently of the module."""
    if n == 1:
        return [start_frame]
    return [start_frame + round(i * (total - 1) / (n - 1)) for i in range(n)]


def shown(sampled):
    return [read_frame_index(image) for image in sampled.images]


def assert_one_line_naming(error, path):
    message = str(error.value)
    assert str(path) in message
    assert "\n" not in message


@pytest.fixture
def count_decoded(monkeypatch):
    """Counts packets sent to the video decoder (one per frame decoded)."""
    counter = {"frames": 0}
    decode = media._decode_packet

    def counting(stream, packet):
        counter["frames"] += packet.size > 0
        return decode(stream, packet)

    monkeypatch.setattr(media, "_decode_packet", counting)
    return counter


# --- sampling rule ----------------------------------------------------------------------------------


def test_sample_frame_indices_follows_the_reference_rule():
    assert sample_frame_indices(100, 8) == [0, 14, 28, 42, 57, 71, 85, 99]
    assert sample_frame_indices(100, 1) == [0]
    assert sample_frame_indices(1, 1) == [0]
    for total in range(1, 40):
        for n in range(1, 12):
            assert sample_frame_indices(total, n) == reference_indices(total, n)


def test_sample_frame_indices_rounds_half_to_even_like_the_reference():
    assert sample_frame_indices(6, 3) == [0, 2, 5]  # 2.5 -> 2
    assert sample_frame_indices(4, 3) == [0, 2, 3]  # 1.5 -> 2


def test_sample_frame_indices_repeats_when_there_are_fewer_frames_than_wanted():
    assert sample_frame_indices(3, 5) == [0, 0, 1, 2, 2]
    assert sample_frame_indices(1, 4) == [0, 0, 0, 0]


def test_sample_frame_indices_rejects_empty_requests():
    with pytest.raises(ValueError):
        sample_frame_indices(0, 8)
    with pytest.raises(ValueError):
        sample_frame_indices(10, 0)


# --- media_kind ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, kind",
    [("a.mp4", "video"), ("b.MOV", "video"), ("c.mkv", "video"), ("d.Gif", "gif"), ("e.JPEG", "image"),
     ("f.tiff", "image"), ("g.webp", "image"), ("h.wmv", "video")],
)
def test_media_kind_by_extension_ignoring_case(tmp_path, name, kind):
    (tmp_path / name).write_bytes(b"")
    assert media_kind(tmp_path / name) == kind
    assert media_kind(str(tmp_path / name)) == kind


def test_media_kind_of_folders_and_file_lists(tmp_path):
    files = make_frame_folder(tmp_path / "frames", 3)
    assert media_kind(tmp_path / "frames") == "frames"
    assert media_kind(files) == "frames"
    assert media_kind([str(f) for f in files]) == "frames"


def test_media_kind_reports_missing_and_unsupported_files(tmp_path):
    with pytest.raises(MediaError, match="file not found") as missing:
        media_kind(tmp_path / "nope.mp4")
    assert_one_line_naming(missing, tmp_path / "nope.mp4")
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(MediaError, match=r"unsupported file type '\.txt'.*\.mp4.*\.gif.*\.png") as unsupported:
        media_kind(tmp_path / "notes.txt")
    assert_one_line_naming(unsupported, tmp_path / "notes.txt")


# --- videos -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("ext", [".mp4", ".mkv", ".mov", ".avi", ".webm", ".wmv"])
def test_video_frames_are_the_reference_samples(tmp_path, ext):
    path = make_video(tmp_path / f"clip{ext}", 50, fps=25)
    sampled = load_frames(path, 8)
    assert sampled.indices == reference_indices(50, 8) == [0, 7, 14, 21, 28, 35, 42, 49]
    assert shown(sampled) == sampled.indices
    assert (sampled.total_frames, sampled.fps, sampled.kind, sampled.source) == (50, 25.0, "video", str(path))
    assert all(image.mode == "RGB" and image.size == (64, 48) for image in sampled.images)


def test_video_with_fewer_frames_than_wanted_repeats_frames(tmp_path, count_decoded):
    path = make_video(tmp_path / "short.mp4", 3)
    sampled = load_frames(path, 8)
    assert sampled.indices == reference_indices(3, 8) == [0, 0, 1, 1, 1, 1, 2, 2]
    assert shown(sampled) == sampled.indices
    assert len(sampled.images) == 8
    assert count_decoded["frames"] == 3  # each frame decoded once, repeats reuse the image


@pytest.mark.parametrize(
    "start, end, first, last",
    [
        (1.0, 2.0, 25, 50),  # frames shown at 1 s and 2 s
        (1.0, None, 25, 99),
        (None, 2.0, 0, 50),
        (3.5, 60.0, 87, 99),  # an end past the video is clamped
        (1.5, 1.51, 37, 37),  # a window shorter than a frame gives one frame, repeated
        (0, -1, 0, 99),  # the reference's defaults mean "not clipped"
    ],
)
def test_start_and_end_clip_videos_like_the_reference(clip_25fps, start, end, first, last):
    sampled = load_frames(clip_25fps, 8, start_time=start, end_time=end)
    assert sampled.indices == reference_indices(last - first + 1, 8, first)
    assert shown(sampled) == sampled.indices
    assert sampled.total_frames == 100


def test_a_single_frame_of_a_clip_is_its_first_frame(clip_25fps):
    # The reference returned frame 0 here whatever the start; we take the clip's first frame.
    sampled = load_frames(clip_25fps, 1, start_time=2.0)
    assert sampled.indices == [50]
    assert shown(sampled) == [50]


def test_clip_times_that_make_no_sense_are_refused(clip_25fps):
    with pytest.raises(MediaError, match=r"start_time 4s is beyond the end \(100 frames at 25 fps = 4.00s\)") as late:
        load_frames(clip_25fps, 8, start_time=4.0)
    assert_one_line_naming(late, clip_25fps)
    with pytest.raises(MediaError, match="end_time 1s must be after start_time 2s") as backwards:
        load_frames(clip_25fps, 8, start_time=2.0, end_time=1.0)
    assert_one_line_naming(backwards, clip_25fps)
    with pytest.raises(MediaError, match="end_time 1s must be after start_time 1s"):
        load_frames(clip_25fps, 8, start_time=1.0, end_time=1.0)


@pytest.mark.parametrize("rotation", [90, -90, 180])
def test_display_rotation_is_applied(tmp_path, rotation):
    path = make_video(tmp_path / "phone.mp4", 20, rotation=rotation)
    with av.open(str(path)) as container:  # the metadata really is in the file
        assert next(container.decode(video=0)).rotation % 360 == rotation % 360
    sampled = load_frames(path, 4)
    assert sampled.indices == [0, 6, 13, 19]
    expected_size = (64, 48) if rotation == 180 else (48, 64)
    assert all(image.size == expected_size for image in sampled.images)
    # Turning back by the opposite angle recovers the stored frames; a turn the wrong way would not
    # (6, 13 and 19 read differently when rotated by 180 degrees).
    assert [read_frame_index(image.rotate(-rotation, expand=True)) for image in sampled.images] == sampled.indices


def test_rotation_matches_what_players_show(tmp_path):
    # A phone's portrait clip stores landscape frames and a track matrix [0 1; -1 0], which players
    # show turned 90 degrees clockwise. Write that matrix by hand, independently of PyAV's helpers.
    path = make_video(tmp_path / "portrait.mp4", 3)
    data = bytearray(path.read_bytes())
    matrix_at = data.index(b"tkhd") + 44  # box size and type, version 0 fields, then the matrix
    assert struct.unpack_from(">9i", data, matrix_at) == (0x10000, 0, 0, 0, 0x10000, 0, 0, 0, 0x40000000)
    struct.pack_into(">9i", data, matrix_at, 0, 0x10000, 0, -0x10000, 0, 0, 48 << 16, 0, 0x40000000)
    path.write_bytes(bytes(data))
    image = load_frames(path, 3).images[1]  # frame 1: only the top-left cell is white
    assert image.size == (48, 64)
    pixels = np.asarray(image).mean(axis=2)
    assert pixels[5, 42] > 200  # top-left went to the top-right corner: a clockwise turn
    assert pixels[5, 5] < 50 and pixels[58, 5] < 50 and pixels[58, 42] < 50


def test_variable_frame_rate_video_is_indexed_by_presentation_order(tmp_path):
    times = [0, 0.04, 0.5, 0.52, 0.6, 1.5, 1.51, 1.52, 3.0, 3.1]
    path = make_video(tmp_path / "vfr.mp4", len(times), timestamps=times)
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        average_rate = float(stream.average_rate)
        gaps = np.diff([float(p.pts * stream.time_base) for p in container.demux(stream) if p.size][:3])
    assert len(set(np.round(gaps, 3))) > 1  # really irregular
    everything = load_frames(path, 10)
    assert everything.indices == list(range(10)) and shown(everything) == everything.indices
    sampled = load_frames(path, 4)
    assert sampled.indices == reference_indices(10, 4) and shown(sampled) == sampled.indices
    assert sampled.fps == average_rate  # the stream's average rate, as the reference used


def test_missing_frame_count_in_the_header(tmp_path):
    path = make_video(tmp_path / "nocount.mkv", 30)
    with av.open(str(path)) as container:
        assert container.streams.video[0].frames == 0  # Matroska does not store it
    sampled = load_frames(path, 8)
    assert sampled.total_frames == 30
    assert sampled.indices == reference_indices(30, 8) and shown(sampled) == sampled.indices


def test_wrong_frame_count_in_the_header(tmp_path):
    path = make_video(tmp_path / "liar.avi", 30)
    data = bytearray(path.read_bytes())
    for chunk, field in ((b"avih", 16), (b"strh", 32)):  # dwTotalFrames, dwLength
        struct.pack_into("<I", data, data.index(chunk) + 8 + field, 500)
    path.write_bytes(bytes(data))
    with av.open(str(path)) as container:
        assert container.streams.video[0].frames == 500
    sampled = load_frames(path, 8)
    assert sampled.total_frames == 30
    assert sampled.indices == reference_indices(30, 8) and shown(sampled) == sampled.indices


def test_long_gop_with_b_frames_seeks_to_the_right_frames(long_video):
    with av.open(str(long_video)) as container:
        packets = [p for p in container.demux(video=0) if p.size]
    assert len(packets) == 1500
    assert any(p.pts != p.dts for p in packets)  # B-frames reorder the stream
    assert sum(p.is_keyframe for p in packets) < 60  # GOPs far longer than the gaps between some targets
    for n in (1, 8, 16, 33):
        sampled = load_frames(long_video, n)
        assert sampled.indices == reference_indices(1500, n)
        assert shown(sampled) == sampled.indices
    clipped = load_frames(long_video, 8, start_time=17.3, end_time=31.9)
    assert clipped.indices == reference_indices(797 - 432 + 1, 8, 432)
    assert shown(clipped) == clipped.indices


def test_seeking_decodes_far_fewer_frames_than_a_full_decode(long_video, count_decoded):
    everything = load_frames(long_video, 1500)
    full = count_decoded["frames"]
    assert full == 1500 and shown(everything) == list(range(1500))
    count_decoded["frames"] = 0
    sampled = load_frames(long_video, 8)
    assert shown(sampled) == reference_indices(1500, 8)
    print(f"decoded {count_decoded['frames']} of {full} frames for 8 samples")
    assert count_decoded["frames"] < 0.25 * full


@pytest.mark.parametrize("ext", [".mkv", ".avi"])
def test_truncated_video_still_gives_every_frame_asked_for(tmp_path, ext):
    path = make_video(tmp_path / f"full{ext}", 200, g=25, bf=0)
    data = path.read_bytes()
    cut = tmp_path / f"cut{ext}"
    cut.write_bytes(data[: len(data) // 2])
    sampled = load_frames(cut, 8)
    assert 50 < sampled.total_frames < 150  # only what could be read
    assert len(sampled.images) == 8
    assert sampled.indices == sorted(sampled.indices) and sampled.indices[-1] < sampled.total_frames
    assert shown(sampled) == sampled.indices  # a substituted frame is reported as what it is


def break_decoding(monkeypatch, broken):
    """Make the decoder fail on packets whose pts (= frame index in these AVI files) is in ``broken``."""
    decode = media._decode_packet

    def failing(stream, packet):
        if packet.pts in broken:
            raise av.InvalidDataError(1094995529, "Invalid data found when processing input")
        return decode(stream, packet)

    monkeypatch.setattr(media, "_decode_packet", failing)


def test_an_undecodable_target_is_replaced_by_the_nearest_decodable_frame(tmp_path, monkeypatch):
    path = make_video(tmp_path / "clip.avi", 40, g=1)  # intra only: a lost frame does not damage the next
    break_decoding(monkeypatch, {20})
    sampled = load_frames(path, 3)  # wants 0, 20, 39
    assert sampled.indices == [0, 21, 39]
    assert shown(sampled) == sampled.indices


def test_an_undecodable_tail_falls_back_to_the_closest_frame_read(tmp_path, monkeypatch):
    path = make_video(tmp_path / "clip.avi", 40, g=1)
    break_decoding(monkeypatch, set(range(30, 40)))
    sampled = load_frames(path, 4)  # wants 0, 13, 26, 39
    assert sampled.indices == [0, 13, 26, 26]
    assert shown(sampled) == sampled.indices


def test_a_video_where_nothing_decodes_is_reported(tmp_path, monkeypatch):
    path = make_video(tmp_path / "clip.avi", 10)
    break_decoding(monkeypatch, set(range(10)))
    with pytest.raises(MediaError, match="no frame can be decoded") as error:
        load_frames(path)
    assert_one_line_naming(error, path)


@pytest.mark.parametrize("ext", [".mp4", ".mkv", ".avi", ".webm"])
def test_damaged_videos_give_every_frame_or_one_clear_error(tmp_path, ext):
    original = make_video(tmp_path / f"clip{ext}", 60, g=15).read_bytes()
    rng = np.random.default_rng(7)
    damaged = tmp_path / f"damaged{ext}"
    for trial in range(12):
        data = bytearray(original)
        if trial % 2:
            at = int(rng.integers(0, len(data)))
            data[at : at + 500] = rng.bytes(len(data[at : at + 500]))
        else:
            data = data[: int(rng.integers(0, len(data)))]
        damaged.write_bytes(bytes(data))
        try:
            sampled = load_frames(damaged, 8)
        except MediaError as error:
            assert str(damaged) in str(error) and "\n" not in str(error)
        else:
            assert len(sampled.images) == len(sampled.indices) == 8
            assert all(image.mode == "RGB" for image in sampled.images)


# --- bad videos -----------------------------------------------------------------------------------


def test_random_bytes_are_not_a_video(tmp_path):
    path = tmp_path / "noise.mp4"
    path.write_bytes(np.random.default_rng(0).bytes(5000))
    with pytest.raises(MediaError, match="cannot open as a video") as error:
        load_frames(path)
    assert_one_line_naming(error, path)


def test_mp4_cut_in_half_is_reported(tmp_path):
    path = make_video(tmp_path / "full.mp4", 100)
    data = path.read_bytes()
    cut = tmp_path / "half.mp4"
    cut.write_bytes(data[: len(data) // 2])  # the index (moov) is written last: it is gone
    with pytest.raises(MediaError, match="cannot open as a video") as error:
        load_frames(cut)
    assert_one_line_naming(error, cut)


def test_video_without_frames_is_reported(tmp_path):
    path = make_empty_video(tmp_path / "empty.avi")
    with pytest.raises(MediaError, match="the video has no frames") as error:
        load_frames(path)
    assert_one_line_naming(error, path)


@pytest.mark.parametrize("ext", [".mp4", ".mkv"])
def test_file_without_video_stream_is_reported(tmp_path, ext):
    path = make_audio_only(tmp_path / f"sound{ext}")
    with pytest.raises(MediaError, match="no video stream") as error:
        load_frames(path)
    assert_one_line_naming(error, path)


def test_missing_video_is_reported(tmp_path):
    with pytest.raises(MediaError, match="file not found") as error:
        load_frames(tmp_path / "gone.mp4")
    assert_one_line_naming(error, tmp_path / "gone.mp4")


# --- GIFs -----------------------------------------------------------------------------------------


def test_gif_frames_are_the_reference_samples(tmp_path):
    path = make_gif(tmp_path / "anim.gif", 20)
    sampled = load_frames(path, 8)
    assert sampled.indices == reference_indices(20, 8) and shown(sampled) == sampled.indices
    assert (sampled.total_frames, sampled.fps, sampled.kind, sampled.source) == (20, None, "gif", str(path))
    assert all(image.mode == "RGB" and image.size == (64, 48) for image in sampled.images)


def test_short_gif_gives_each_frame_once_like_the_reference(tmp_path):
    path = make_gif(tmp_path / "short.gif", 5)
    sampled = load_frames(path, 8)  # the reference sample is [0, 1, 1, 2, 2, 3, 3, 4]
    assert sampled.indices == [0, 1, 2, 3, 4]
    assert shown(sampled) == sampled.indices


def test_gif_clipping_follows_frame_durations(tmp_path):
    # Frames appear at 0, 0.1, 0.3, 0.4 (a zero duration counts 100 ms), 0.7; the GIF ends at 0.8 s.
    path = make_gif(tmp_path / "timed.gif", 5, durations_ms=[100, 200, 0, 300, 100])
    sampled = load_frames(path, 8, start_time=0.25, end_time=0.45)
    assert sampled.indices == [1, 2, 3] and shown(sampled) == [1, 2, 3]
    assert load_frames(path, 2, start_time=0.7).indices == [4]
    with pytest.raises(MediaError, match=r"start_time 0.8s is beyond the end \(0.80s\)") as error:
        load_frames(path, 8, start_time=0.8)
    assert_one_line_naming(error, path)


def test_corrupt_gif_is_reported(tmp_path):
    path = tmp_path / "broken.gif"
    path.write_bytes(b"GIF89a" + np.random.default_rng(1).bytes(300))
    with pytest.raises(MediaError, match="cannot read the GIF") as error:
        load_frames(path)
    assert_one_line_naming(error, path)


# --- images and frame folders -----------------------------------------------------------------------


@pytest.mark.parametrize("ext", [".png", ".jpg", ".tif", ".webp"])
def test_image_is_one_frame_whatever_n_frames(tmp_path, ext):
    path = make_image(tmp_path / f"still{ext}", 37)
    sampled = load_frames(path, 8, start_time=5.0)
    assert (sampled.indices, sampled.total_frames, sampled.fps, sampled.kind) == ([0], 1, None, "image")
    assert shown(sampled) == [37]
    assert sampled.images[0].mode == "RGB"


def test_grayscale_and_transparent_images_become_rgb(tmp_path):
    Image.fromarray(index_frame(5)).convert("L").save(tmp_path / "gray.png")
    Image.fromarray(index_frame(6)).convert("RGBA").save(tmp_path / "alpha.png")
    for name, index in (("gray.png", 5), ("alpha.png", 6)):
        image = load_frames(tmp_path / name).images[0]
        assert image.mode == "RGB" and read_frame_index(image) == index


def test_exif_orientation_is_applied_to_images(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # stored turned: a viewer rotates it 90 degrees clockwise
    Image.fromarray(index_frame(6)).save(tmp_path / "photo.jpg", exif=exif, quality=95)
    image = load_frames(tmp_path / "photo.jpg").images[0]
    assert image.size == (48, 64)
    assert read_frame_index(image.rotate(90, expand=True)) == 6


def test_unreadable_image_is_reported(tmp_path):
    path = tmp_path / "broken.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 50)
    with pytest.raises(MediaError, match="cannot read the image") as error:
        load_frames(path)
    assert_one_line_naming(error, path)
    truncated = tmp_path / "truncated.png"
    make_image(truncated, 3, size=(640, 480))
    truncated.write_bytes(truncated.read_bytes()[:200])
    with pytest.raises(MediaError, match="cannot read the image") as error:
        load_frames(truncated)
    assert_one_line_naming(error, truncated)


@pytest.fixture
def pixel_limit(monkeypatch):
    """Lower PIL's decompression-bomb limit so a 64x48 image (3,072 pixels) counts as huge."""

    def set_limit(pixels):
        monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", pixels)

    return set_limit


@pytest.mark.parametrize("kind", ["image", "gif", "frame-folder"])
def test_image_over_the_pixel_limit_gives_our_one_warning_not_pils(tmp_path, kind):
    if kind == "image":
        source = big = make_image(tmp_path / "big.png", 9)
    elif kind == "gif":
        source = big = make_gif(tmp_path / "big.gif", 3)
    else:
        make_frame_folder(tmp_path / "frames", 3)
        source, big = tmp_path / "frames", tmp_path / "frames" / "frame1.png"
        make_image(big, 1, size=(64, 64))  # 4,096 pixels; its siblings (3,072) stay under the limit
    limit = 3500 if kind == "frame-folder" else 2000  # warn above this, refuse above twice it
    # A fresh process with warnings shown (-W default), as a user's script would see them.
    script = (
        "import sys; from PIL import Image; from tarsier.media import load_frames; "
        f"Image.MAX_IMAGE_PIXELS = {limit}; s = load_frames(sys.argv[1], 3); print(len(s.images))"
    )
    result = subprocess.run([sys.executable, "-W", "default", "-c", script, str(source)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ("1" if kind == "image" else "3")
    assert "DecompressionBombWarning" not in result.stderr  # no raw PIL warning
    [line] = result.stderr.strip().splitlines()
    assert str(big) in line and "pixels" in line and "decoding it in full" in line


@pytest.mark.parametrize("kind", ["image", "gif", "frame-list"])
def test_image_over_twice_the_pixel_limit_is_a_one_line_media_error(tmp_path, pixel_limit, kind):
    if kind == "image":
        source = big = make_image(tmp_path / "bomb.jpg", 9)
    elif kind == "gif":
        source = big = make_gif(tmp_path / "bomb.gif", 3)
    else:
        files = make_frame_folder(tmp_path / "frames", 3, size=(32, 32))  # 1,024 pixels each
        big = make_image(files[2], 2, size=(64, 48))
        source = files
    pixel_limit(1000)  # 2,000 pixels: 64x48 = 3,072 is beyond it
    if kind == "frame-list":
        assert load_frames(files[:2], 2).indices == [0, 1]  # 1,024 pixels each: only warned about
    with pytest.raises(MediaError, match=r"\(3,072 pixels, over the decompression-bomb limit of 2,000 ") as error:
        load_frames(source, 3)
    assert_one_line_naming(error, big)


def test_frame_folder_is_sorted_naturally_and_sampled_like_a_video(tmp_path):
    make_frame_folder(tmp_path / "frames", 12)  # frame0.png .. frame11.png
    (tmp_path / "frames" / "notes.txt").write_text("not a frame")
    (tmp_path / "frames" / "._frame3.png").write_bytes(b"macOS metadata, not a frame")
    sampled = load_frames(tmp_path / "frames", 4)
    assert sampled.indices == reference_indices(12, 4) == [0, 4, 7, 11]
    assert shown(sampled) == sampled.indices  # a plain sort would put frame10 before frame2
    assert (sampled.total_frames, sampled.fps, sampled.kind) == (12, None, "frames")
    assert sampled.source == str(tmp_path / "frames")
    assert all(image.mode == "RGB" for image in sampled.images)


def test_list_of_frame_files_is_sorted_like_a_folder(tmp_path):
    files = make_frame_folder(tmp_path / "frames", 10, ext=".jpg")
    shuffled = [str(files[i]) for i in (3, 9, 0, 7, 1, 5, 2, 8, 6, 4)]
    sampled = load_frames(shuffled, 8)
    assert sampled.indices == reference_indices(10, 8) and shown(sampled) == sampled.indices
    assert sampled.source == str(tmp_path / "frames")
    few = load_frames(files[:3], 5)
    assert few.indices == [0, 0, 1, 2, 2] and shown(few) == few.indices  # like a video, not a GIF


def test_bad_frame_folders_and_lists_are_reported(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("no frames here")
    with pytest.raises(MediaError, match="no frame images") as error:
        load_frames(tmp_path / "empty")
    assert_one_line_naming(error, tmp_path / "empty")
    files = make_frame_folder(tmp_path / "frames", 3)
    with pytest.raises(MediaError, match="file not found") as error:
        load_frames([*files, tmp_path / "frames" / "frame3.png"])
    assert_one_line_naming(error, tmp_path / "frames" / "frame3.png")
    with pytest.raises(MediaError, match="not a frame image") as error:
        load_frames([*files, tmp_path / "empty" / "readme.txt"])
    assert_one_line_naming(error, tmp_path / "empty" / "readme.txt")
    with pytest.raises(MediaError, match="empty list"):
        load_frames([])
    with pytest.raises(MediaError, match="frame images carry no timing") as error:
        load_frames(tmp_path / "frames", 2, start_time=1.0)
    assert_one_line_naming(error, tmp_path / "frames")
    (tmp_path / "frames" / "frame1.png").write_bytes(b"garbage")
    with pytest.raises(MediaError, match="cannot read the image") as error:
        load_frames(tmp_path / "frames", 3)
    assert_one_line_naming(error, tmp_path / "frames" / "frame1.png")


# --- write_video ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "ext, codec", [(".mp4", "h264"), (".mkv", "h264"), (".mov", "h264"), (".avi", "mpeg4"), (".webm", "vp9")]
)
def test_write_video_picks_a_codec_by_extension(tmp_path, ext, codec):
    path = tmp_path / f"out{ext}"
    write_video(path, [Image.fromarray(index_frame(i)) for i in range(5)], fps=10)
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        assert (stream.codec_context.name, stream.average_rate, stream.width, stream.height) == (codec, 10, 64, 48)
        assert [read_frame_index(frame.to_image()) for frame in container.decode(stream)] == list(range(5))


def test_write_video_refuses_what_it_cannot_write(tmp_path):
    with pytest.raises(MediaError, match="no default codec for '.xyz'"):
        write_video(tmp_path / "out.xyz", [index_frame(0)])
    with pytest.raises(ValueError, match="at least one frame"):
        write_video(tmp_path / "out.mp4", [])


def test_decoder_and_its_frames_are_freed_without_the_garbage_collector(clip_25fps, monkeypatch):
    """Captioning millions of clips must not wait for gc: nothing of a decode may outlive load_frames."""
    import gc
    import weakref

    decoders = []

    class Watched(media._VideoDecoder):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            decoders.append(weakref.ref(self))

    monkeypatch.setattr(media, "_VideoDecoder", Watched)
    gc.collect()
    gc.disable()
    try:
        sampled = load_frames(clip_25fps, 8)
        assert len(sampled.images) == 8
        assert decoders and all(ref() is None for ref in decoders)
    finally:
        gc.enable()
