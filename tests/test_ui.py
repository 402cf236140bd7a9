"""The built-in viewer (issue 14) in headless Chromium, driven by selenium: the page's own data
(`window.pyprofilerUI`, see docs and /work/ui_contract.md) checked against what the workloads
did and against `go tool pprof` on the same profile bytes.

The workloads run in processes of their own (ui_workload.py) that serve /debug/pprof/ on a free
loopback port; the offline viewer is `python -m pyprofiler ui FILE --port 0`. Chromium talks to
nothing but 127.0.0.1 (its host resolver maps every other name to nothing). Each test saves a
screenshot named after its view, to $PYPROFILER_SCREENSHOTS if set, else to its tmp_path.
"""

from __future__ import annotations

import base64
import contextlib
import inspect
import os
import re
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path

import pytest
import requests
from support import click_frame, go_pprof, headless_chromium, read_line, top_table

pytestmark = pytest.mark.browser

WORKLOAD = Path(__file__).with_name("ui_workload.py")
TIMEOUT = 30  # Per HTTP request, and per page load beyond the profile's own seconds.
SECONDS = 3  # Of each CPU profile or heap delta the page takes.
LOAD_TIMEOUT = SECONDS + 45
START_TIMEOUT = 30
GO_TIMEOUT = 300  # `go run` may have to build the standard library into an empty cache.
GROWTH = (0xD5, 0x5E, 0x00)
SHRINK = (0x00, 0x72, 0xB2)


def name_is(function: str):
    """A predicate: is this profile function name `function`, whatever module qualifies it?"""
    pattern = re.compile(rf"(^|[.:]){re.escape(function)}$")
    return lambda name: bool(name) and bool(pattern.search(name))


HOT_A, HOT_B, PARENT, OTHER = map(name_is, ("hot_a", "hot_b", "parent_work", "other_work"))
LEAK_MORE, STEADY = name_is("leak_more"), name_is("steady")


# ---- processes ---------------------------------------------------------------------------------


def stop_process(process: subprocess.Popen) -> None:
    """Stop a process this module started, by its pid: closing its stdin first (the workloads
    exit on EOF), then SIGTERM, then SIGKILL."""
    if process.stdin:
        with contextlib.suppress(OSError):
            process.stdin.close()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
    if process.stdout:
        process.stdout.close()


@contextlib.contextmanager
def workload(mode: str, log: Path):
    """ui_workload.py MODE; yields its /debug/pprof/ URL."""
    with open(log, "wb") as stderr:
        process = subprocess.Popen(
            [sys.executable, str(WORKLOAD), mode],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
        )
    try:
        url = read_line(process, START_TIMEOUT)
        assert url.startswith("http://127.0.0.1:"), (url, log.read_text())
        yield url
    finally:
        stop_process(process)


@contextlib.contextmanager
def offline_viewer(*args: str | os.PathLike, log: Path):
    """`python -m pyprofiler ui ARGS --port 0`; yields the URL it prints on its first line."""
    with open(log, "wb") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "pyprofiler", "ui", *map(str, args), "--port", "0"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
        )
    try:
        first = read_line(process, START_TIMEOUT)
        match = re.search(r"http://(127\.0\.0\.1|localhost):\d+/\S*", first)
        assert match, f"no URL on the first line: {first!r}\n{log.read_text()}"
        yield match[0]
    finally:
        stop_process(process)


@pytest.fixture(scope="module")
def cpu_app(tmp_path_factory):
    with workload("cpu", tmp_path_factory.mktemp("cpu_app") / "stderr.txt") as url:
        yield url


# ---- the browser -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def driver(tmp_path_factory):
    with headless_chromium(tmp_path_factory.mktemp("chromium")) as browser:
        yield browser


def screenshot(driver, name: str, tmp_path: Path) -> Path:
    directory = Path(os.environ.get("PYPROFILER_SCREENSHOTS") or tmp_path)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.png"
    driver.save_screenshot(str(path))
    return path


def console(driver) -> str:
    """The page's console messages so far, for failure messages."""
    with contextlib.suppress(Exception):
        return "\n".join(entry["message"] for entry in driver.get_log("browser"))
    return ""


def ui(driver, expression: str, *args):
    """`window.pyprofilerUI.<expression>` evaluated in the page."""
    return driver.execute_script(f"return window.pyprofilerUI.{expression};", *args)


def status(driver) -> str | None:
    return driver.execute_script("return document.body && document.body.dataset.status")


def error_text(driver) -> str:
    return driver.execute_script(
        "const e = document.getElementById('error'); return e ? e.textContent : null"
    )


def wait_for(driver, condition, timeout: float, what: str, interval: float = 0.1):
    """Poll `condition()` until it returns something true; fail (with the page's state) after
    `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(
                f"timed out after {timeout} s waiting for {what}; status {status(driver)!r}, "
                f"error {error_text(driver)!r}\nconsole:\n{console(driver)}"
            )
        time.sleep(interval)


def wait_settled(driver, timeout: float = LOAD_TIMEOUT) -> str:
    return wait_for(
        driver,
        lambda: status(driver) in ("ready", "error") and status(driver),
        timeout,
        "status ready or error",
    )


def open_page(driver, url: str, timeout: float = LOAD_TIMEOUT, expect: str = "ready") -> None:
    """Navigate to `url` (a real navigation: a URL differing only in its hash would not reload)
    and wait until the page is ready (or, with expect="error", shows an error)."""
    driver.get("about:blank")
    driver.get(url)
    settled = wait_settled(driver, timeout)
    assert settled == expect, (
        f"status {settled!r}, error {error_text(driver)!r}\nconsole:\n{console(driver)}"
    )


def hash_of(**state) -> str:
    return urllib.parse.urlencode(state, quote_via=urllib.parse.quote)


def frames(driver) -> list[dict]:
    return ui(driver, "frames()")


def frame_named(driver, predicate, under=None) -> dict:
    """The one drawn frame whose name satisfies `predicate` (directly under frame `under`)."""
    found = [f for f in frames(driver) if predicate(f["name"])]
    if under is not None:
        found = [f for f in found if is_child(f, under)]
    assert len(found) == 1, found
    return found[0]


def is_child(frame: dict, parent: dict) -> bool:
    return (
        frame["depth"] == parent["depth"] + 1
        and frame["x"] >= parent["x"] - 0.5
        and frame["x"] + frame["w"] <= parent["x"] + parent["w"] + 0.5
    )


def canvas_width(driver) -> float:
    return driver.execute_script(
        "return document.getElementById('flame').getBoundingClientRect().width"
    )


def search_for(driver, text: str) -> float:
    """Type `text` into #search; wait for the page to apply it; return searchShare()."""
    box = driver.find_element("css selector", "#search")
    box.clear()
    box.send_keys(text)

    def applied():
        if ui(driver, "state().search") != text:
            return None
        share = ui(driver, "searchShare()")
        return share is not None and share > 0 and ("share", share)

    try:
        return wait_for(driver, applied, 3, "the search to apply")[1]
    except pytest.fail.Exception:
        box.send_keys("\n")  # A page that searches on Enter only.
        return wait_for(driver, applied, 5, f"the search {text!r} to apply")[1]


def profile_bytes(driver) -> bytes:
    """The bytes the page fetched and drew, read back from its download link (a Blob URL of
    those bytes, per the contract), so that `go tool pprof` judges exactly what the page shows."""
    answer = driver.execute_async_script(
        """
        const done = arguments[arguments.length - 1];
        const link = document.getElementById('download');
        const href = link && link.href;
        if (!href || !href.startsWith('blob:')) { done({href, error: 'not a Blob URL'}); return; }
        fetch(href).then(r => r.arrayBuffer()).then(buffer => {
            const bytes = new Uint8Array(buffer);
            let text = '';
            for (let i = 0; i < bytes.length; i += 0x8000)
                text += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
            done({href, data: btoa(text)});
        }).catch(e => done({href, error: String(e)}));
        """
    )
    assert "data" in answer, answer
    return base64.b64decode(answer["data"])


def pixel(driver, x: float, y: float) -> tuple[int, int, int]:
    """The colour drawn on #flame at CSS pixel (x, y)."""
    return tuple(
        driver.execute_script(
            """
            const [x, y] = arguments;
            const canvas = document.getElementById('flame');
            const scale = canvas.width / canvas.getBoundingClientRect().width;
            const data = canvas.getContext('2d')
                .getImageData(Math.floor(x * scale), Math.floor(y * scale), 1, 1).data;
            return [data[0], data[1], data[2]];
            """,
            x,
            y,
        )
    )


def has_nonzero_figure(text: str, line: int) -> bool:
    """Does `text` hold a nonzero number (1.2s, 35%, 120ms, 1,234...) other than `line`?"""
    for figure in re.findall(r"\d[\d,]*(?:\.\d+)?", text):
        value = float(figure.replace(",", ""))
        if value > 0 and figure != str(line):
            return True
    return False


def hue_of(rgb: tuple[int, int, int]) -> str:
    """The kind of colour of a drawn pixel: "growth" (vermillion-ish), "shrink" (blue-ish) or
    "grey"."""
    r, g, b = rgb
    if r - b > 40 and r >= g:
        return "growth"
    if b - r > 40:
        return "shrink"
    return "grey"


# ---- 1. the CPU flame graph, zoom, search and top table ----------------------------------------


def test_cpu_flame_zoom_search_and_top(driver, cpu_app, tmp_path):
    open_page(driver, cpu_app + "ui/#" + hash_of(profile="profile", seconds=SECONDS, view="flame"))
    parent = frame_named(driver, PARENT)
    children = [f for f in frames(driver) if is_child(f, parent)]
    widest = max(children, key=lambda f: f["w"])
    assert HOT_A(widest["name"]), children
    hot_a = widest
    hot_b = frame_named(driver, HOT_B, under=parent)
    # ~70 % against ~30 %: hot_a clearly the wider.
    assert hot_a["total"] > 1.5 * hot_b["total"], (hot_a, hot_b)
    assert hot_a["total"] <= parent["total"]
    screenshot(driver, "flame", tmp_path)

    # The same bytes, judged by pprof.
    path = tmp_path / "cpu.pb.gz"
    path.write_bytes(profile_bytes(driver))
    table = top_table(go_pprof(["-top", "-nodecount=1000"], path))
    pprof_hot_a = [pcts for name, pcts in table.items() if HOT_A(name)]
    assert len(pprof_hot_a) == 1, table
    pprof_flat, pprof_cum = pprof_hot_a[0]

    # Click zooms: hot_a's subtree fills the width.
    click_frame(driver, hot_a)
    wait_for(
        driver,
        lambda: (ui(driver, "state().zoom") or [None])[-1] == hot_a["name"],
        5,
        "the zoom into hot_a",
    )
    zoomed = frame_named(driver, HOT_A)
    width = canvas_width(driver)
    assert abs(zoomed["x"]) <= 1 and abs(zoomed["w"] - width) <= 1.5, (zoomed, width)
    screenshot(driver, "flame-zoomed", tmp_path)

    # Search: hot_a's share, as pprof's cum (the samples with hot_a anywhere in the stack).
    share = search_for(driver, "hot_a")
    print(f"hot_a: the page's search share {share:.2f} %, pprof's cum {pprof_cum} %")
    assert abs(share - pprof_cum) <= 1, (share, pprof_cum, pprof_flat)
    shown = driver.execute_script("return document.getElementById('search-result').dataset.share")
    assert shown is not None and abs(float(shown) - share) < 1e-6, shown
    screenshot(driver, "flame-search", tmp_path)

    # The top table, sorted by flat: hot_a first.
    driver.find_element("css selector", 'button[data-view="top"]').click()
    wait_for(driver, lambda: ui(driver, "topRows()"), 10, "the top table")
    rows = ui(driver, "topRows()")
    for _ in range(2):
        flats = [row["flat"] for row in rows]
        if flats == sorted(flats, reverse=True):
            break
        driver.find_element("css selector", 'th[data-sort="flat"]').click()
        rows = ui(driver, "topRows()")
    flats = [row["flat"] for row in rows]
    assert flats == sorted(flats, reverse=True), rows[:5]
    assert HOT_A(rows[0]["name"]), rows[:5]
    assert abs(rows[0]["flatPct"] - pprof_flat) <= 1, (rows[0], pprof_flat)
    first_row = driver.find_element(
        "css selector", f'#top-table tbody tr[data-name="{rows[0]["name"]}"]'
    )
    screenshot(driver, "top", tmp_path)

    # A click on the name: the flame graph, searching for exactly that function.
    cells = first_row.find_elements("css selector", "td")
    name_cell = cells[-1]
    clickable = name_cell.find_elements("css selector", "button, a")
    (clickable[0] if clickable else name_cell).click()
    wait_for(driver, lambda: ui(driver, "state().view") == "flame", 5, "the flame view")
    search = ui(driver, "state().search")
    assert re.fullmatch(search, rows[0]["name"]) and search.startswith("^"), search
    assert abs(ui(driver, "searchShare()") - pprof_cum) <= 1


# ---- 2. the heap diff of a leak ----------------------------------------------------------------


def test_heap_diff_colours_the_leak_as_growth(driver, tmp_path):
    with workload("leak", tmp_path / "stderr.txt") as url:
        time.sleep(1)  # Some of the leak in the base already.
        open_page(
            driver,
            url + "ui/#" + hash_of(profile="heap", view="diff", diff=SECONDS, sample="inuse_space"),
        )
        drawn = frames(driver)
        leak = [f for f in drawn if LEAK_MORE(f["name"])]
        assert leak, [f["name"] for f in drawn]
        for frame in leak:
            assert frame["change"] == "growth", frame
            assert frame["diff"] > 0, frame
        steady = [f for f in drawn if STEADY(f["name"])]
        assert all(f["change"] != "growth" for f in steady), steady
        # The colour drawn: sample the frame's area away from its centre line, where a label
        # may be written; most of it must be vermillion, none of it blue.
        frame = max(leak, key=lambda f: f["w"])
        hues = [
            hue_of(pixel(driver, frame["x"] + frame["w"] * fx, frame["y"] + frame["h"] * fy))
            for fx in (0.1, 0.3, 0.5, 0.7, 0.9)
            for fy in (0.15, 0.85)
        ]
        assert hues.count("growth") >= len(hues) // 2 and "shrink" not in hues, hues
        legend = driver.find_element("css selector", "#legend")
        assert legend.is_displayed() and "growth" in legend.text.lower(), legend.text
        screenshot(driver, "diff", tmp_path)


# ---- 3. the offline viewer on a profile written by Go ------------------------------------------

GO_PROGRAM = """\
package main

import (
	"os"
	"runtime/pprof"
	"time"
)

//go:noinline
func goHotLoop(n int) int {
	s := 0
	for i := 0; i < n; i++ {
		s += i * i % 7
	}
	return s
}

func main() {
	f, err := os.Create(os.Args[1])
	if err != nil {
		panic(err)
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		panic(err)
	}
	s := 0
	for deadline := time.Now().Add(1500 * time.Millisecond); time.Now().Before(deadline); {
		s += goHotLoop(1000000)
	}
	pprof.StopCPUProfile()
	if err := f.Close(); err != nil {
		panic(err)
	}
	println(s)
}
"""


def go_written_profile(directory: Path) -> Path:
    source = directory / "main.go"
    source.write_text(GO_PROGRAM)
    output = directory / "go-cpu.pb.gz"
    env = dict(
        os.environ,
        GOFLAGS="-mod=mod",
        GOPROXY="off",
        GOTOOLCHAIN="local",
        GOPATH=str(directory / "gopath"),
        GO111MODULE="on",
    )
    result = subprocess.run(
        ["go", "run", str(source), str(output)],
        cwd=directory,
        env=env,
        capture_output=True,
        text=True,
        timeout=GO_TIMEOUT,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert output.stat().st_size > 0
    return output


def test_offline_viewer_opens_a_profile_written_by_go(driver, tmp_path):
    path = go_written_profile(tmp_path)
    assert "main.goHotLoop" in go_pprof(["-top"], path)
    with offline_viewer(path, log=tmp_path / "stderr.txt") as url:
        assert urllib.parse.urlsplit(url).hostname in ("127.0.0.1", "localhost"), url
        profiles = requests.get(urllib.parse.urljoin(url, "profiles"), timeout=TIMEOUT).json()
        assert profiles["mode"] == "files", profiles
        open_page(driver, url)
        names = {f["name"] for f in frames(driver) or []}
        if "main.goHotLoop" not in names:
            driver.find_element("css selector", 'button[data-view="top"]').click()
            wait_for(driver, lambda: ui(driver, "topRows()"), 10, "the top table")
            names = {row["name"] for row in ui(driver, "topRows()")}
        assert "main.goHotLoop" in names, sorted(names)[:50]
        screenshot(driver, "offline-go", tmp_path)


# ---- 4. the source view ------------------------------------------------------------------------


def test_source_view_lists_the_hot_lines_and_only_named_files(driver, cpu_app, tmp_path):
    import ui_workload

    open_page(driver, cpu_app + "ui/#" + hash_of(profile="profile", seconds=SECONDS, view="flame"))
    name = frame_named(driver, HOT_A)["name"]
    # load() resolves when the page is ready or shows an error (webdriver awaits the Promise).
    source_view = hash_of(profile="profile", seconds=SECONDS, view="source", fn=name)
    ui(driver, "load(arguments[0])", source_view)
    wait_settled(driver)
    assert status(driver) == "ready", (error_text(driver), console(driver))
    assert ui(driver, "state().view") == "source"
    lines, start = inspect.getsourcelines(ui_workload.hot_a)
    source = {start + i: text.strip() for i, text in enumerate(lines)}
    rows = wait_for(
        driver,
        lambda: driver.execute_script(
            """return [...document.querySelectorAll('#source-view tr[data-line]')]
                   .map(tr => [Number(tr.dataset.line), tr.innerText])"""
        ),
        10,
        "the source view's rows",
    )
    shown = dict(rows)
    # The loop's lines are listed with their own text and carry samples.
    loop = [n for n, text in source.items() if "total += i * i" in text]
    assert loop and all(n in shown for n in loop), (loop, sorted(shown))
    for number in loop:
        assert source[number] in shown[number], (number, shown[number])
    # Its figures (flat, cum) are written before its text; some are nonzero.
    assert any(has_nonzero_figure(shown[n].split(source[n])[0], n) for n in loop), {
        n: shown[n] for n in loop
    }
    screenshot(driver, "source", tmp_path)

    # Only files the profile names: /etc/passwd is refused with a reason, not read.
    for path in ("/etc/passwd", "../../../../../etc/passwd", "/proc/self/environ"):
        answer = requests.get(cpu_app + "ui/source", params={"file": path}, timeout=TIMEOUT)
        assert answer.status_code == 403, (path, answer.status_code, answer.text[:200])
        assert answer.headers["Content-Type"].startswith("text/plain"), answer.headers
        assert answer.text.strip() and "root:" not in answer.text, answer.text[:200]
        assert "Traceback" not in answer.text
    # The hot function's own file is named by the profile just taken: served.
    own = requests.get(
        cpu_app + "ui/source", params={"file": ui_workload.__file__}, timeout=TIMEOUT
    )
    if own.status_code == 200:
        assert "def hot_a" in own.text


# ---- 5. label filters --------------------------------------------------------------------------


def test_label_filter_keeps_only_that_threads_frames(driver, cpu_app, tmp_path):
    open_page(driver, cpu_app + "ui/#" + hash_of(profile="profile", seconds=SECONDS, view="flame"))
    names = {f["name"] for f in frames(driver)}
    assert any(map(HOT_A, names)) and any(map(OTHER, names)), sorted(names)
    everything = ui(driver, "total()")
    labels = driver.execute_script("return document.getElementById('labels').textContent")
    assert "thread" in labels and "ui-hot" in labels and "ui-other" in labels, labels

    open_page(
        driver,
        cpu_app
        + "ui/#"
        + hash_of(profile="profile", seconds=SECONDS, view="flame", tagfocus="thread=ui-hot"),
    )
    assert ui(driver, "state().tagfocus") == "thread=ui-hot"
    names = {f["name"] for f in frames(driver)}
    assert any(map(HOT_A, names)) and any(map(HOT_B, names)), sorted(names)
    assert not any(map(OTHER, names)), sorted(names)
    focused = ui(driver, "total()")
    assert 0 < focused, focused
    # The list of labels open in the picture (it may sit in a closed <details>).
    driver.execute_script(
        "const box = document.getElementById('labels').closest('details'); if (box) box.open = true"
    )
    screenshot(driver, "labels", tmp_path)

    open_page(
        driver,
        cpu_app
        + "ui/#"
        + hash_of(profile="profile", seconds=SECONDS, view="flame", tagignore="thread=ui-hot"),
    )
    names = {f["name"] for f in frames(driver)}
    assert any(map(OTHER, names)), sorted(names)
    assert not any(map(HOT_A, names)) and not any(map(PARENT, names)), sorted(names)
    ignored = ui(driver, "total()")
    # Two profiles of the same load: the parts are each well below a whole.
    assert 0 < ignored < everything and focused < everything * 1.3, (ignored, focused, everything)


# ---- 6. bad input ------------------------------------------------------------------------------


def test_bad_input_gets_clear_texts(driver, cpu_app, tmp_path):
    # A profile the server does not have: the page knows it from `profiles` and need not ask;
    # either way it names the profile (the server's own text would be "Unknown profile").
    server_text = requests.get(cpu_app + "nosuch", timeout=TIMEOUT)
    assert server_text.status_code == 404
    open_page(driver, cpu_app + "ui/#" + hash_of(profile="nosuch", view="flame"), expect="error")
    shown = error_text(driver)
    assert server_text.text.strip() in shown or "nosuch" in shown, (shown, server_text.text)
    assert "Traceback" not in driver.find_element("css selector", "body").text

    # What only the server can judge: its text, shown as it is.
    too_long = requests.get(cpu_app + "profile?seconds=1000", timeout=TIMEOUT)
    assert too_long.status_code == 400 and "seconds" in too_long.text, too_long.text
    open_page(driver, cpu_app + "ui/#" + hash_of(profile="profile", seconds=1000), expect="error")
    shown = error_text(driver)
    assert too_long.text.strip() in shown, (shown, too_long.text)
    assert "Traceback" not in driver.find_element("css selector", "body").text
    screenshot(driver, "error", tmp_path)

    for path, expected in (
        ("ui/nonexistent.js", (404,)),
        ("ui/source", range(400, 500)),
        ("ui/source?file=", range(400, 500)),
        ("ui/%2e%2e/%2e%2e/%2e%2e/etc/passwd", (403, 404)),
        ("ui/static/../../../etc/passwd", (403, 404)),
    ):
        answer = requests.get(cpu_app + path, timeout=TIMEOUT)
        assert answer.status_code in expected, (path, answer.status_code, answer.text[:200])
        assert answer.headers["Content-Type"].startswith("text/plain"), (path, answer.headers)
        assert answer.text.strip(), path
        assert "Traceback" not in answer.text and "root:" not in answer.text, answer.text[:300]


# ---- 7. the URL keeps the view -----------------------------------------------------------------


def test_reload_restores_zoom_and_search(driver, cpu_app, tmp_path):
    open_page(driver, cpu_app + "ui/#" + hash_of(profile="profile", seconds=SECONDS, view="flame"))
    hot_a = frame_named(driver, HOT_A, under=frame_named(driver, PARENT))
    click_frame(driver, hot_a)
    wait_for(
        driver,
        lambda: (ui(driver, "state().zoom") or [None])[-1] == hot_a["name"],
        5,
        "the zoom into hot_a",
    )
    search_for(driver, "hot_a")
    before = ui(driver, "state()")
    url = driver.current_url
    assert "zoom=" in url and "search=" in url, url

    driver.refresh()
    settled = wait_settled(driver)
    assert settled == "ready", (error_text(driver), console(driver))
    assert driver.current_url == url
    after = ui(driver, "state()")
    assert after == before, (before, after)
    zoomed = frame_named(driver, HOT_A)
    assert abs(zoomed["w"] - canvas_width(driver)) <= 1.5, zoomed
    assert ui(driver, "searchShare()") > 0
    screenshot(driver, "url-state", tmp_path)
