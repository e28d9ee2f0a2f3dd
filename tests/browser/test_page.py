#!/usr/bin/env python3
"""Headless-browser test of the playground page served by `tokenwise serve`.

Loads the page, generates a completion, checks that the streamed tokens are drawn as
coloured spans and that hovering one shows the alternatives tooltip, runs one chat turn,
and saves a screenshot.

    TOKENWISE_URL=http://127.0.0.1:8080 python3 tests/browser/test_page.py [SCREENSHOT.png]
    python3 tests/browser/test_page.py --url http://127.0.0.1:8080 --screenshot docs/playground.png

Needs `pip install playwright` (the driver only) and a system Chromium (`apt-get install -y
chromium`; path from $CHROMIUM, default /usr/bin/chromium). Exits 0 on success, 1 on a
failed check, 2 on a setup problem, 3 if the whole run exceeds --deadline seconds.
"""
import argparse
import os
import sys
import threading
import time


def fail(msg, code=1):
    print(f"FAIL: {msg}", file=sys.stderr, flush=True)
    os._exit(code)  # never hang on a wedged browser during teardown


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("screenshot_pos", nargs="?", help="screenshot path (same as --screenshot)")
    ap.add_argument("--url", default=os.environ.get("TOKENWISE_URL"), help="server base URL (default $TOKENWISE_URL)")
    ap.add_argument("--screenshot", default=None, help="where to save the PNG (default docs/playground.png)")
    ap.add_argument("--prompt", default="Once upon a time", help="completion prompt to send")
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--chromium", default=os.environ.get("CHROMIUM", "/usr/bin/chromium"))
    ap.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for one generation to finish")
    ap.add_argument("--deadline", type=float, default=240.0, help="hard limit for the whole run, seconds")
    ap.add_argument("--no-chat", action="store_true", help="skip the chat-mode check")
    ap.add_argument("--headed", action="store_true")
    args = ap.parse_args()

    url = args.url or "http://127.0.0.1:8080"
    shot = args.screenshot or args.screenshot_pos or "docs/playground.png"

    # Watchdog: whatever happens (driver stuck, browser wedged), end the process.
    watchdog = threading.Timer(args.deadline, lambda: fail(f"deadline of {args.deadline:.0f}s exceeded", 3))
    watchdog.daemon = True
    watchdog.start()

    try:
        from playwright.sync_api import sync_playwright, TimeoutError as PWTimeout
    except ImportError:
        fail("playwright is not installed (pip install playwright)", 2)
    if not os.path.exists(args.chromium):
        fail(f"no Chromium at {args.chromium} (apt-get install -y chromium, or set $CHROMIUM)", 2)

    page_errors = []
    t_start = time.time()
    gen_ms = int(args.timeout * 1000)

    def step(msg):
        print(f"[{time.time() - t_start:6.1f}s] {msg}", flush=True)

    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=args.chromium, headless=not args.headed, timeout=30_000,
            args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
        try:
            ctx = browser.new_context(viewport={"width": 1440, "height": 900}, device_scale_factor=1,
                                      color_scheme="dark")
            page = ctx.new_page()
            page.set_default_timeout(15_000)
            page.set_default_navigation_timeout(20_000)
            page.on("pageerror", lambda e: page_errors.append(str(e)))
            # Chromium logs every non-2xx fetch as a console error; only script errors count.
            page.on("console", lambda m: m.type == "error" and "Failed to load resource" not in m.text
                    and page_errors.append("console: " + m.text))

            step(f"open {url}")
            try:
                resp = page.goto(url.rstrip("/") + "/", wait_until="load")
            except PWTimeout:
                fail(f"page {url} did not load")
            except Exception as e:  # connection refused etc.
                fail(f"cannot open {url}: {e}", 2)
            if resp is None or not resp.ok:
                fail(f"GET / answered {resp.status if resp else 'nothing'}")

            # /tokenwise/info loaded and the dropdowns built from it
            try:
                page.wait_for_function("document.body.dataset.state === 'ready'", timeout=15_000)
            except PWTimeout:
                fail(f"page never became ready (state={page.evaluate('document.body.dataset.state')!r}; "
                     f"server badge: {page.inner_text('#model-name')!r})")
            model = page.inner_text("#model-name")
            n_kv = page.locator("#kv_policy option").count()
            step(f"ready: model {model!r}, {n_kv - 1} KV policies")
            if n_kv < 2 or page.locator("#sampler_preset option").count() < 2:
                fail("sampler / KV policy dropdowns were not filled from /tokenwise/info")

            # ---- completion ----
            page.fill("#max_tokens", str(args.max_tokens))
            page.fill("#seed", "42")
            page.fill("#prompt", args.prompt)
            page.focus("#prompt")
            page.keyboard.press("Control+Enter")
            step("sent completion (Ctrl+Enter)")
            try:
                page.wait_for_selector("#view-completion .run span.tok", timeout=gen_ms)
            except PWTimeout:
                err = page.inner_text("#error-msg") if page.is_visible("#error") else ""
                fail(f"no token arrived within {args.timeout:.0f}s {('; error: ' + err) if err else ''}")
            try:
                page.wait_for_selector("#view-completion .run:not(.streaming)", timeout=gen_ms)
            except PWTimeout:
                fail(f"generation did not finish within {args.timeout:.0f}s")
            run = page.locator("#view-completion .run").last
            cls = run.get_attribute("class") or ""
            if "error" in cls or page.is_visible("#error"):
                fail("generation ended with an error: " + page.inner_text("#error-msg"))
            toks = run.locator("span.tok")
            n = toks.count()
            step(f"finished: {n} token spans, footer: {run.locator('.run-foot').inner_text()!r}")
            if n < 2:
                fail(f"expected several token spans, got {n}")
            coloured = page.evaluate("""() => [...document.querySelectorAll('#view-completion span.tok')]
                .filter(s => s.style.backgroundColor && s.style.backgroundColor !== 'transparent').length""")
            if coloured < max(1, n // 2):
                fail(f"only {coloured} of {n} token spans carry an inline background colour")
            text = run.locator(".tokens").inner_text()
            if not text.strip():
                fail("the completion text is empty")

            # hover a token that has visible text and check the tooltip
            idx = page.evaluate("""() => { const s = [...document.querySelectorAll('#view-completion span.tok')];
                const k = s.findIndex((e, i) => i >= 2 && e.textContent.trim().length > 1);
                return k >= 0 ? k : Math.min(1, s.length - 1); }""")
            target = toks.nth(idx)
            target.scroll_into_view_if_needed()
            target.hover()
            try:
                page.wait_for_selector("#tok-tip:not([hidden])", timeout=5_000)
            except PWTimeout:
                fail("hovering a token did not show #tok-tip")
            tip = page.inner_text("#tok-tip")
            n_alt = page.locator("#tok-tip .alt").count()
            step(f"tooltip for token #{idx}: {n_alt} alternative rows")
            for word in ("logprob", "surprisal", "entropy"):
                if word not in tip:
                    fail(f"tooltip lacks {word!r}: {tip!r}")
            if n_alt < 1:
                fail(f"tooltip shows no alternatives: {tip!r}")

            # the colour toggle recolours without errors
            page.click("label:has(input[name=colorby][value=surprisal])")
            page.click("label:has(input[name=colorby][value=entropy])")
            target.hover()
            page.wait_for_selector("#tok-tip:not([hidden])", timeout=5_000)

            os.makedirs(os.path.dirname(os.path.abspath(shot)), exist_ok=True)
            page.screenshot(path=shot, timeout=15_000)
            step(f"screenshot saved to {shot}")

            # ---- chat (one turn) ----
            if not args.no_chat:
                page.mouse.move(5, 5)
                page.click("label:has(input[name=mode][value=chat])")
                page.fill("#prompt", "Say hello in five words.")
                page.click("#send")
                try:
                    page.wait_for_selector("#view-chat .msg.assistant span.tok", timeout=gen_ms)
                    page.wait_for_selector("#view-chat .msg.assistant:not(.streaming)", timeout=gen_ms)
                except PWTimeout:
                    fail(f"chat reply did not stream and finish within {args.timeout:.0f}s")
                if page.is_visible("#error"):
                    fail("chat ended with an error: " + page.inner_text("#error-msg"))
                m = page.locator("#view-chat .msg.assistant span.tok").count()
                step(f"chat reply: {m} token spans")
                if page.locator("#view-chat .msg.user").count() != 1:
                    fail("user message not shown in chat view")

            if page_errors:
                fail("JavaScript errors on the page: " + " | ".join(page_errors[:5]))
        finally:
            try:
                browser.close()
            except Exception:
                pass

    watchdog.cancel()
    print("1 passed, 0 failed", flush=True)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except SystemExit:
        raise
    except Exception as e:  # any Playwright error is a failure, not a traceback-and-hang
        fail(f"{type(e).__name__}: {e}")
