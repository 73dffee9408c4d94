"""`gaussmem serve`: the HTTP API (TestClient), a real server killed mid-write, and the
page driven by headless Chromium."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import synthetic_set
from gaussmem.gallery_file import MANIFEST_NAME
from gaussmem.gallery_journal import JOURNAL_NAME, JournalWriter
from gaussmem.presets import preset
from gaussmem.recognizer import Recognizer
from gaussmem.train import train

fastapi = pytest.importorskip("fastapi", reason="the serve extra (fastapi) is not installed")
httpx2 = pytest.importorskip("httpx2", reason="httpx2 (TestClient's client) is not installed")
from fastapi.testclient import TestClient  # noqa: E402

from gaussmem.service import served_gallery  # noqa: E402
from gaussmem.service.app import create_app  # noqa: E402
from gaussmem.service.served_gallery import ServedGallery  # noqa: E402
from gaussmem.service.uploads import Upload  # noqa: E402

SRC = Path(__file__).resolve().parents[1] / "src"
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    threads = torch.get_num_threads()
    run = tmp_path_factory.mktemp("service-smoke") / "run"
    try:
        train(preset("smoke"), run, synthetic_set(), synthetic_set(), progress=False)
    finally:  # train() sets the process's threads; the other tests keep theirs
        torch.set_num_threads(threads)
    return run / "checkpoints" / "last.ckpt"


def drawing_png(class_index: int, drawer: int) -> bytes:
    """A synthetic drawing as a user has it: dark on light, 56x56 RGB PNG bytes."""
    pixels = 255 - synthetic_set(4).images[class_index, drawer]
    buffer = io.BytesIO()
    Image.fromarray(pixels).resize((56, 56)).convert("RGB").save(buffer, format="PNG")
    return buffer.getvalue()


def files(field: str, *payloads: bytes) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [(field, (f"{field}{index}.png", payload, "image/png"))
            for index, payload in enumerate(payloads)]


def client_for(gallery_dir: Path, checkpoint: Path | None = None, **options: object
               ) -> TestClient:
    gallery = ServedGallery.open(gallery_dir, checkpoint)
    return TestClient(create_app(gallery, **options), raise_server_exceptions=False)


@pytest.fixture
def client(checkpoint: Path, tmp_path: Path) -> TestClient:
    return client_for(tmp_path / "gallery", checkpoint)


def enroll(client: TestClient, label: str, class_index: int, drawers: tuple[int, ...] = (0, 1),
           **headers: str) -> httpx2.Response:
    return client.post(f"/api/v1/labels/{label}/examples", headers=headers,
                       files=files("images", *(drawing_png(class_index, d) for d in drawers)))


# --- the API ----------------------------------------------------------------------------
def test_health_page_and_docs(client: TestClient) -> None:
    health = client.get("/healthz").json()
    assert health["status"] == "ok" and health["kind"] == "strokes" and health["labels"] == 0
    page = client.get("/")
    assert page.status_code == 200 and 'id="enroll-button"' in page.text
    assert client.get("/docs").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/api/v1/labels", "/api/v1/recognize", "/api/v1/calibrate",
            "/api/v1/labels/{label}/examples"} <= set(paths)


def test_enroll_list_thumbnail_recognize_and_remove(client: TestClient) -> None:
    first = enroll(client, "alpha", 0)
    assert first.status_code == 200, first.text
    assert first.json()["images"] == 2 and first.json()["examples"] == 2
    assert enroll(client, "beta", 1).status_code == 200
    listing = client.get("/api/v1/labels").json()
    assert [(row["label"], row["examples"]) for row in listing["labels"]] == [
        ("alpha", 2), ("beta", 2)]
    thumbnail = client.get(listing["labels"][0]["thumbnail"])
    assert thumbnail.headers["content-type"] == "image/png"
    # The thumbnail is the model's input: the drawing made strokes-bright on black.
    pixels = np.asarray(Image.open(io.BytesIO(thumbnail.content)))
    assert pixels.shape == (28, 28) and np.median(pixels) < 128

    result = client.post("/api/v1/recognize?k=2", files=files("image", drawing_png(0, 5)))
    assert result.status_code == 200, result.text
    body = result.json()
    assert body["label"] == "alpha" and 0 < body["similarity"] <= 1
    assert [match["label"] for match in body["top_k"]] == ["alpha", "beta"]
    strict = client.post("/api/v1/recognize?threshold=1.5", files=files("image", drawing_png(0, 5)))
    assert strict.json()["label"] is None and strict.json()["nearest"] == "alpha"

    removed = client.delete("/api/v1/labels/alpha")
    assert removed.status_code == 200 and removed.json()["removed_entries"] >= 1
    assert [row["label"] for row in client.get("/api/v1/labels").json()["labels"]] == ["beta"]
    assert client.get("/api/v1/labels/alpha/thumbnail").status_code == 404


def test_labels_with_slashes_and_unicode_round_trip(client: TestClient) -> None:
    assert enroll(client, "a%2Fb", 0).status_code == 200   # the label "a/b"
    assert enroll(client, "Zoë", 1).status_code == 200
    listing = client.get("/api/v1/labels").json()["labels"]
    assert [row["label"] for row in listing] == ["Zoë", "a/b"]
    assert all(client.get(row["thumbnail"]).status_code == 200 for row in listing)
    assert client.delete("/api/v1/labels/a%2Fb").status_code == 200


def test_calibrate_stores_a_threshold(client: TestClient) -> None:
    enroll(client, "alpha", 0)
    enroll(client, "beta", 1)
    response = client.post(
        "/api/v1/calibrate", data={"known_labels": ["alpha", "beta"], "target_far": "0.0"},
        files=[*files("known", drawing_png(0, 7), drawing_png(1, 7)),
               *files("unknown", drawing_png(2, 0), drawing_png(3, 0))])
    assert response.status_code == 200, response.text
    threshold = response.json()["threshold"]
    assert response.json()["false_accept_rate"] == 0
    assert client.get("/api/v1/labels").json()["threshold"] == pytest.approx(threshold)
    mismatched = client.post("/api/v1/calibrate", data={"known_labels": ["alpha"]},
                             files=[*files("known", drawing_png(0, 7), drawing_png(1, 7)),
                                    *files("unknown", drawing_png(2, 0))])
    assert mismatched.status_code == 400 and "known_labels" in mismatched.json()["error"]
    stranger = client.post("/api/v1/calibrate", data={"known_labels": ["gamma"]},
                           files=[*files("known", drawing_png(0, 7)),
                                  *files("unknown", drawing_png(2, 0))])
    assert stranger.status_code == 400 and "gamma" in stranger.json()["error"]
    bad_score = client.post("/api/v1/calibrate", data={"known_labels": ["alpha"],
                                                      "score": "vibes"},
                            files=[*files("known", drawing_png(0, 7)),
                                   *files("unknown", drawing_png(2, 0))])
    assert bad_score.status_code == 400 and "vibes" in bad_score.json()["error"]


@pytest.mark.parametrize(("payload", "problem"), [
    (b"hello, not an image", "not a readable image"),
    (b"", "empty file"),
    (b"\x89PNG\r\n\x1a\n" + b"\0" * 40, "not a readable image"),
])
def test_not_an_image_is_415_and_enrolls_nothing(client: TestClient, payload: bytes,
                                                  problem: str) -> None:
    enroll(client, "alpha", 0)
    response = client.post("/api/v1/labels/beta/examples",
                           files=files("images", drawing_png(1, 0), payload))
    assert response.status_code == 415
    assert problem in response.json()["error"] and "images1.png" in response.json()["error"]
    assert [row["label"] for row in client.get("/api/v1/labels").json()["labels"]] == ["alpha"]
    recognize = client.post("/api/v1/recognize", files=files("image", payload))
    assert recognize.status_code == 415


def test_too_large_is_413_before_reading(checkpoint: Path, tmp_path: Path) -> None:
    client = client_for(tmp_path / "gallery", checkpoint, max_upload_bytes=2000)
    response = client.post("/api/v1/labels/alpha/examples",
                           files=files("images", drawing_png(0, 0), b"x" * 3000))
    assert response.status_code == 413 and "2000-byte limit" in response.json()["error"]
    assert client.get("/api/v1/labels").json()["labels"] == []


def test_body_without_length_is_411(client: TestClient) -> None:
    response = client.post("/api/v1/recognize", content=iter([b"--x\r\n"]),
                           headers={"content-type": "multipart/form-data; boundary=x"})
    assert response.status_code == 411 and "Content-Length" in response.json()["error"]


@pytest.mark.parametrize("label", ["%20", "%20%20", "tab%09"])
def test_empty_or_unprintable_label_is_400(client: TestClient, label: str) -> None:
    response = enroll(client, label, 0)
    assert response.status_code == 400 and "non-empty printable" in response.json()["error"]
    assert client.get("/api/v1/labels").json()["labels"] == []


def test_unknown_label_is_404(client: TestClient) -> None:
    response = client.delete("/api/v1/labels/nobody")
    assert response.status_code == 404 and "'nobody' is not in the gallery" in (
        response.json()["error"])
    assert client.get("/api/v1/labels/nobody/thumbnail").status_code == 404


def test_malformed_parameters_are_422_with_a_json_error(client: TestClient) -> None:
    image = files("image", drawing_png(0, 0))
    for query in ("k=0", "k=101", "k=two", "threshold=abc"):
        response = client.post(f"/api/v1/recognize?{query}", files=image)
        assert response.status_code == 422, query
        assert response.json()["error"].startswith("query."), query
    missing = client.post("/api/v1/recognize", files=files("picture", drawing_png(0, 0)))
    assert missing.status_code == 422 and "image" in missing.json()["error"]
    nan = client.post("/api/v1/recognize?threshold=nan", files=image)
    assert nan.status_code in (400, 422) and "error" in nan.json()


def test_api_key(checkpoint: Path, tmp_path: Path) -> None:
    client = client_for(tmp_path / "gallery", checkpoint, api_key="s3cret")
    for headers in ({}, {"X-API-Key": "wrong"}):
        response = client.get("/api/v1/labels", headers=headers)
        assert response.status_code == 401 and "X-API-Key" in response.json()["error"]
        assert enroll(client, "alpha", 0, **headers).status_code == 401
    assert client.get("/healthz").json()["api_key_required"] is True
    assert client.get("/").status_code == 200     # the page asks for the key itself
    assert enroll(client, "alpha", 0, **{"X-API-Key": "s3cret"}).status_code == 200
    assert client.get("/api/v1/labels", headers={"X-API-Key": "s3cret"}).status_code == 200


def test_gallery_persists_across_a_restart(checkpoint: Path, tmp_path: Path) -> None:
    client = client_for(tmp_path / "gallery", checkpoint)
    enroll(client, "alpha", 0)
    enroll(client, "beta", 1)
    enroll(client, "gamma", 2)
    client.delete("/api/v1/labels/gamma")
    before = client.post("/api/v1/recognize", files=files("image", drawing_png(1, 4))).json()
    restarted = client_for(tmp_path / "gallery")          # no checkpoint: the gallery's
    assert [(row["label"], row["examples"])
            for row in restarted.get("/api/v1/labels").json()["labels"]] == [
        ("alpha", 2), ("beta", 2)]
    after = restarted.post("/api/v1/recognize", files=files("image", drawing_png(1, 4))).json()
    assert after == before


def test_a_failed_write_leaves_memory_and_disk_as_they_were(
        client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    enroll(client, "alpha", 0)
    gallery: ServedGallery = client.app.state.gallery

    def disk_full(*_: object) -> None:
        raise OSError("disk full")

    # The first write fails to append to the journal; the next ones then try a whole
    # snapshot, which fails too. On the classes: a failed write reloads the gallery into
    # a new Recognizer.
    monkeypatch.setattr(JournalWriter, "append", disk_full)
    monkeypatch.setattr(Recognizer, "save", disk_full)
    for response in (enroll(client, "beta", 1), enroll(client, "alpha", 2),
                     client.delete("/api/v1/labels/alpha")):
        assert response.status_code == 503
        assert "disk full" in response.json()["error"] and "undone" in response.json()["error"]
    # The gallery answered from was reloaded from disk: only the saved enrollment.
    assert gallery.labels() == {"alpha": 2}
    assert Recognizer.load(gallery.directory).labels() == {"alpha": 2}
    monkeypatch.undo()
    assert enroll(client, "beta", 1).status_code == 200    # a snapshot, then appends
    assert enroll(client, "gamma", 2).status_code == 200
    assert Recognizer.load(gallery.directory).labels() == {"alpha": 2, "beta": 2, "gamma": 2}


def test_writes_go_to_the_journal_and_a_snapshot_folds_it_in(
        checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(served_gallery, "COMPACT_EVERY", 3)
    gallery = ServedGallery.open(tmp_path / "gallery", checkpoint)
    journal = tmp_path / "gallery" / JOURNAL_NAME
    memory_file = tmp_path / "gallery" / "memory.safetensors"
    snapshot = memory_file.read_bytes()
    for index in range(3):
        gallery.enroll(f"p{index}", [Upload("x.png", drawing_png(index, 0))])
    # Three writes: three journal lines after the header, the snapshot untouched.
    assert len(journal.read_bytes().splitlines()) == 4
    assert memory_file.read_bytes() == snapshot
    assert Recognizer.load(gallery.directory).labels() == {"p0": 1, "p1": 1, "p2": 1}
    gallery.remove("p1")                                 # the fourth: a new snapshot
    assert len(journal.read_bytes().splitlines()) == 1
    assert memory_file.read_bytes() != snapshot
    reloaded = Recognizer.load(gallery.directory)
    assert reloaded.labels() == {"p0": 1, "p2": 1}
    for name in ("means", "variances", "labels", "counts"):
        assert torch.equal(getattr(reloaded.memory, name), getattr(gallery.recognizer.memory,
                                                                   name))
    gallery.close()


def test_opening_removes_what_an_interrupted_save_left(checkpoint: Path,
                                                        tmp_path: Path) -> None:
    ServedGallery.open(tmp_path / "gallery", checkpoint)
    for leftover in (".gallery.x1.tmp", ".gallery.x2.old"):
        (tmp_path / leftover).mkdir()
        (tmp_path / leftover / MANIFEST_NAME).write_text("{}")
    (tmp_path / ".other.x3.tmp").mkdir()           # not this gallery's
    ServedGallery.open(tmp_path / "gallery")
    assert sorted(path.name for path in tmp_path.iterdir()) == [".other.x3.tmp", "gallery"]


def test_concurrent_writes_are_all_saved(checkpoint: Path, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    # Small enough that the threads' writes cross several snapshots.
    monkeypatch.setattr(served_gallery, "COMPACT_EVERY", 5)
    gallery = ServedGallery.open(tmp_path / "gallery", checkpoint)
    errors: list[BaseException] = []

    def writer(thread: int) -> None:
        try:
            for index in range(4):
                gallery.enroll(f"t{thread}-{index}",
                               [Upload("x.png", drawing_png(thread % 4, index))])
            gallery.remove(f"t{thread}-0")
        except BaseException as error:  # reported below, in the test's thread
            errors.append(error)

    threads = [threading.Thread(target=writer, args=(thread,)) for thread in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    expected = {f"t{thread}-{index}": 1 for thread in range(4) for index in range(1, 4)}
    assert gallery.labels() == expected
    assert Recognizer.load(gallery.directory).labels() == expected


def test_a_recognition_is_answered_while_a_write_is_flushed(client: TestClient) -> None:
    enroll(client, "alpha", 0)
    append = JournalWriter.append
    saving, release = threading.Event(), threading.Event()

    def slow_append(self: JournalWriter, record: object) -> None:
        saving.set()
        assert release.wait(timeout=60), "the test never released the write"
        append(self, record)

    answers: list[httpx2.Response] = []
    recognized: list[httpx2.Response] = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(JournalWriter, "append", slow_append)
        writer = threading.Thread(target=lambda: answers.append(enroll(client, "beta", 1)))
        writer.start()
        try:
            assert saving.wait(timeout=60)
            # The write is parked: the recognition must not wait for it (a thread with a
            # timeout, so a regression fails instead of hanging), and it sees the gallery
            # with the write being flushed (memory and disk agree once it returns).
            reader = threading.Thread(target=lambda: recognized.append(client.post(
                "/api/v1/recognize?k=2", files=files("image", drawing_png(1, 4)))))
            reader.start()
            reader.join(timeout=30)
            assert recognized, "the recognition waited for the write"
            assert writer.is_alive() and not answers
        finally:
            release.set()
            writer.join(timeout=60)
            reader.join(timeout=60)
    assert recognized[0].status_code == 200
    assert {match["label"] for match in recognized[0].json()["top_k"]} == {"alpha", "beta"}
    assert [response.status_code for response in answers] == [200]
    assert Recognizer.load(client.app.state.gallery.directory).labels() == {
        "alpha": 2, "beta": 2}


def test_a_new_gallery_needs_a_checkpoint(tmp_path: Path) -> None:
    from gaussmem.errors import GalleryError

    with pytest.raises(GalleryError, match="--checkpoint"):
        ServedGallery.open(tmp_path / "new")


# --- the command ---------------------------------------------------------------------------
def run_cli(*arguments: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gaussmem", *arguments], capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, "PYTHONPATH": str(SRC)})


def test_serve_refuses_the_network_without_a_key_and_an_empty_key(tmp_path: Path) -> None:
    refused = run_cli("serve", "--gallery", str(tmp_path / "g"), "--host", "0.0.0.0")
    assert refused.returncode == 2 and "--api-key-file" in refused.stderr
    empty = tmp_path / "key"
    empty.write_text("\n")
    no_key = run_cli("serve", "--gallery", str(tmp_path / "g"), "--api-key-file", str(empty))
    assert no_key.returncode == 2 and "empty" in no_key.stderr
    assert run_cli("serve", "--gallery", "g", "--port", "70000").returncode == 2
    assert not (tmp_path / "g").exists()


def test_the_command_defaults_to_the_apps_upload_limit() -> None:
    from gaussmem.commands import serve
    from gaussmem.service.app import DEFAULT_MAX_UPLOAD_BYTES

    # The command keeps its own copy so that `gaussmem --help` does not import FastAPI.
    assert serve._DEFAULT_MAX_UPLOAD_BYTES == DEFAULT_MAX_UPLOAD_BYTES


def test_the_cli_stays_free_of_torch_and_fastapi() -> None:
    code = ("import sys, gaussmem.cli; gaussmem.cli.build_parser(); "
            "print(sorted(m for m in ('torch', 'fastapi', 'uvicorn') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(SRC)}, timeout=60)
    assert result.stdout.strip() == "[]", result.stderr


# --- a real server --------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def server(checkpoint: Path, tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[str], Path]]:
    """`python -m gaussmem serve` on 127.0.0.1: (its URL, the process, the gallery)."""
    gallery, port = tmp_path / "gallery", free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "gaussmem", "serve", "--gallery", str(gallery),
         "--checkpoint", str(checkpoint), "--port", str(port)],
        env={**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                pytest.fail(f"the server exited: {process.stdout.read()}")
            try:
                if httpx2.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx2.TransportError:
                if time.monotonic() > deadline:
                    pytest.fail("the server did not answer within 60 s")
                time.sleep(0.2)
        yield url, process, gallery
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def test_kill_9_during_enrollments_leaves_each_fully_in_or_out(
        server: tuple[str, subprocess.Popen[str], Path]) -> None:
    url, process, gallery = server
    answered: list[str] = []
    sent: list[str] = []
    killer: threading.Timer | None = None
    with httpx2.Client(base_url=url, timeout=30) as http:
        for index in range(200):
            label = f"person{index}"
            sent.append(label)
            if len(answered) == 5 and killer is None:
                # Kill while this request (or the next) is being handled and saved.
                killer = threading.Timer(0.02, process.kill)
                killer.start()
            try:
                response = http.post(f"/api/v1/labels/{label}/examples",
                                     files=files("images", drawing_png(index % 4, 0),
                                                 drawing_png(index % 4, 1)))
            except httpx2.TransportError:
                break
            assert response.status_code == 200, response.text
            answered.append(label)
    process.wait(timeout=10)
    assert process.returncode == -signal.SIGKILL
    assert len(answered) < len(sent), "the server was not killed during the stream"
    labels = ServedGallery.open(gallery).labels()
    assert set(answered) <= set(labels) <= set(sent)
    assert all(count == 2 for count in labels.values()), labels
    # Opening it again cleared what the killed save left beside it.
    assert sorted(path.name for path in gallery.parent.iterdir()
                  if path.name.startswith(f".{gallery.name}.")) == []


# --- a real browser --------------------------------------------------------------------------
def browser() -> object:
    """Headless Debian Chromium through its chromedriver (never a downloaded one)."""
    webdriver = pytest.importorskip("selenium.webdriver",
                                    reason="selenium is not installed (pip install selenium)")
    for program in (CHROMIUM, CHROMEDRIVER):
        if not Path(program).is_file():
            pytest.skip(f"{program} is absent: apt-get install chromium chromium-driver")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                     "--window-size=1200,900", "--disable-gpu"):
        options.add_argument(argument)
    return webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))


def test_the_page_enrolls_two_classes_and_recognizes_one(
        server: tuple[str, subprocess.Popen[str], Path], tmp_path: Path) -> None:
    url, _, _ = server
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    images = tmp_path / "images"
    images.mkdir()
    for class_index in (0, 1):
        for drawer in range(3):
            (images / f"c{class_index}-{drawer}.png").write_bytes(drawing_png(class_index,
                                                                              drawer))
    driver = browser()
    try:
        wait = WebDriverWait(driver, 20)
        driver.get(url)
        wait.until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready"))
        assert driver.find_element(By.ID, "enroll-canvas").is_displayed()  # a stroke model
        for label, class_index in (("circle", 0), ("zigzag", 1)):
            driver.find_element(By.ID, "enroll-label").clear()
            driver.find_element(By.ID, "enroll-label").send_keys(label)
            driver.find_element(By.ID, "enroll-files").send_keys("\n".join(
                str(images / f"c{class_index}-{drawer}.png") for drawer in (0, 1)))
            driver.find_element(By.ID, "enroll-button").click()
            wait.until(lambda d, label=label: d.find_elements(
                By.CSS_SELECTOR, f'#classes li[data-label="{label}"]'))
        thumbnails = driver.find_elements(By.CSS_SELECTOR, "#classes img")
        wait.until(lambda d: all(image.get_attribute("src") for image in thumbnails))
        driver.find_element(By.ID, "recognize-file").send_keys(str(images / "c1-2.png"))
        driver.find_element(By.ID, "recognize-button").click()
        wait.until(lambda d: d.find_element(By.ID, "result-label").text)
        assert driver.find_element(By.ID, "result-label").text == "zigzag"
        assert "similarity" in driver.find_element(By.ID, "result-similarity").text
        assert driver.find_elements(By.CSS_SELECTOR, "#top-k li")[0].text.startswith("zigzag")
        # A drawing on the canvas (white strokes on black) enrolls as a third class.
        canvas = driver.find_element(By.ID, "enroll-canvas")
        driver.find_element(By.ID, "enroll-label").clear()
        driver.find_element(By.ID, "enroll-label").send_keys("drawn")
        ActionChains(driver).move_to_element_with_offset(canvas, -60, -60).click_and_hold() \
            .move_by_offset(100, 30).move_by_offset(-40, 60).release().perform()
        driver.find_element(By.ID, "enroll-button").click()
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, '#classes li[data-label="drawn"]'))
        screenshot = tmp_path / "page.png"
        driver.save_screenshot(str(screenshot))
        assert Image.open(screenshot).size[0] > 0
        keep = os.environ.get("GAUSSMEM_SCREENSHOT_DIR")
        if keep:
            shutil.copy(screenshot, Path(keep) / "service-page.png")
    finally:
        driver.quit()


def test_json_errors_are_one_object(client: TestClient) -> None:
    response = client.get("/api/v1/nowhere")
    assert response.status_code == 404 and json.loads(response.text) == {"error": "Not Found"}
    assert (client.get("/")).status_code == 200
    assert MANIFEST_NAME in os.listdir(client.app.state.gallery.directory)
