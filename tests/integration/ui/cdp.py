"""Drives Debian's chromium over the DevTools protocol on a pipe
(--remote-debugging-pipe: fd 3 in, fd 4 out, NUL-separated JSON), with
the standard library only: types a search into the operator page's form,
presses Enter, then follows the first study's link. Prints what each step
showed as JSON. Used by tests/integration/ui.rs.

    cdp.py CHROMIUM PAGE_URL QUERY"""
import json, os, subprocess, sys, tempfile

chromium, url, query = sys.argv[1], sys.argv[2], sys.argv[3]
cmd_r, cmd_w = os.pipe()
out_r, out_w = os.pipe()


def child_fds():
    os.dup2(cmd_r, 3)
    os.dup2(out_w, 4)


profile = tempfile.mkdtemp()
browser = subprocess.Popen(
    [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
     "--disable-background-networking", "--disable-component-update", "--disable-sync",
     "--remote-debugging-pipe", f"--user-data-dir={profile}", "about:blank"],
    pass_fds=(3, 4), preexec_fn=child_fds,
    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
os.close(cmd_r)
os.close(out_w)
buf = b""
next_id = 0
events = []


def receive(waiting_for):
    global buf
    while b"\0" not in buf:
        chunk = os.read(out_r, 65536)
        if not chunk:
            sys.exit(f"chromium closed the pipe waiting for {waiting_for}")
        buf += chunk
    raw, buf = buf.split(b"\0", 1)
    return json.loads(raw)


def call(method, params=None, session=None):
    global next_id
    next_id += 1
    msg = {"id": next_id, "method": method, "params": params or {}}
    if session:
        msg["sessionId"] = session
    os.write(cmd_w, json.dumps(msg).encode() + b"\0")
    while True:
        reply = receive(method)
        if reply.get("id") == next_id:
            if "error" in reply:
                sys.exit(f"{method}: {reply['error']}")
            return reply["result"]
        if "method" in reply:
            events.append(reply["method"])


def wait_event(name):
    while name not in events:
        message = receive(name)
        if "method" in message:
            events.append(message["method"])
    events.remove(name)


# Resolves when the page's view is built (data-state="ready") and `cond`
# holds; fails after 20 s. Event-driven: a MutationObserver, no polling.
WAIT = """new Promise((resolve, reject) => {
  const view = document.getElementById('view');
  // Built for the address shown now, not the one before a navigation.
  const done = () => view && view.dataset.state === 'ready' && view.dataset.route === location.hash && (%s);
  const result = () => ({
    hash: location.hash,
    view: view.dataset.view,
    studies: [...document.querySelectorAll('[data-study]')].map((e) => e.dataset.study),
    instances: [...document.querySelectorAll('[data-instance]')].map((e) => e.dataset.instance),
  });
  if (done()) return resolve(result());
  const obs = new MutationObserver(() => { if (done()) { obs.disconnect(); resolve(result()); } });
  obs.observe(document.documentElement, { attributes: true, subtree: true, childList: true });
  setTimeout(() => reject(new Error('timed out: ' + location.hash + ' ' + (view && view.dataset.state))), 20000);
})"""


def evaluate(expr, session):
    r = call("Runtime.evaluate", {"expression": expr, "awaitPromise": True, "returnByValue": True}, session)
    if "exceptionDetails" in r:
        sys.exit(f"page: {r['exceptionDetails']}")
    return r["result"].get("value")


try:
    target = call("Target.createTarget", {"url": "about:blank"})["targetId"]
    s = call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
    call("Page.enable", session=s)
    call("Page.navigate", {"url": url}, s)
    wait_event("Page.loadEventFired")
    listed = evaluate(WAIT % "document.querySelector('#search') !== null", s)
    # Type the query into the search box and press Enter, as an operator would.
    evaluate("document.querySelector('#search input[name=q]').focus()", s)
    call("Input.insertText", {"text": query}, s)
    for kind in ("keyDown", "keyUp"):
        call("Input.dispatchKeyEvent", {"type": kind, "key": "Enter", "code": "Enter",
                                         "windowsVirtualKeyCode": 13, "text": "\r" if kind == "keyDown" else ""}, s)
    searched = evaluate(WAIT % "location.hash.includes('q=')", s)
    # Follow the first result's link.
    evaluate("document.querySelector('[data-study] a.patient').click()", s)
    detail = evaluate(WAIT % "document.getElementById('view').dataset.view === 'study'", s)
    print(json.dumps({"listed": listed, "searched": searched, "detail": detail}))
finally:
    try:
        call("Browser.close")
    except SystemExit:
        pass
    browser.wait(timeout=30)
