"""The chat page in a real browser (headless Chromium, Playwright): two in-process nodes on 127.0.0.1
serving different models behind a Gateway; each state is saved as a screenshot (tests/helpers/browser.py)."""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from mimirlite import Host
from mimirlite.gateway import Gateway
from mimirlite.gateway.page import short_peer
from mimirlite.mimir import EchoBackend, MimirNode, OpenAIBackend
from tests.helpers import until
from tests.helpers.browser import BrowserPage, open_page, require_browser
from tests.helpers.gateway import LLAMA, WAIT, gateway_for, live
from tests.helpers.openai_server import OpenAIServer

pytestmark = live

LAST_ANSWER = "#transcript .msg.assistant:last-child"
SNAPSHOTS = """() => {
    window.snaps = [];
    const transcript = document.getElementById("transcript");
    new MutationObserver(() => {
        const text = transcript.querySelector(".msg.assistant:last-child .text");
        if (text && text.textContent !== window.snaps[window.snaps.length - 1]) {
            window.snaps.push(text.textContent);
        }
    }).observe(transcript, { subtree: true, childList: true, characterData: true });
}"""
"""Records the last answer's text each time it changes (window.snaps)."""
MARKUP_MODEL = '<img src=x onerror=alert("name")><b>bold</b>'
"""A model name holding markup: shown as text, or an alert fires / an <img> or <b> appears."""


@dataclass
class Net:
    """Nodes (each on its own Host) behind a Gateway."""

    gateway: Gateway
    nodes: list[MimirNode]
    hosts: list[Host]
    stacks: list[contextlib.AsyncExitStack]

    async def kill(self, i: int) -> None:
        """Stop node ``i`` and its host (its connections close)."""
        await self.stacks[i].aclose()


@contextlib.asynccontextmanager
async def network(*backends: Any, **gateway_kwargs: Any) -> AsyncIterator[Net]:
    async with contextlib.AsyncExitStack() as outer:
        nodes, hosts, stacks = [], [], []
        for backend in backends:
            stack = await outer.enter_async_context(contextlib.AsyncExitStack())
            host = await stack.enter_async_context(Host(listen=["/ip4/127.0.0.1/tcp/0"]))
            nodes.append(await stack.enter_async_context(MimirNode(host, backend)))
            hosts.append(host)
            stacks.append(stack)
        addrs = [h.listen_addrs[0] for h in hosts]
        gateway = await outer.enter_async_context(gateway_for(*addrs, **gateway_kwargs))
        yield Net(gateway, nodes, hosts, stacks)


@pytest.fixture
def browser_name(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[Path, str]:
    """The profile folder and the screenshot prefix of the test (skipped without a browser)."""
    require_browser()
    return tmp_path / "profile", request.node.name.removeprefix("test_")


@contextlib.asynccontextmanager
async def browse(net: Net, browser_name: tuple[Path, str]) -> AsyncIterator[BrowserPage]:
    profile, name = browser_name
    async with open_page(net.gateway.url + "/", profile, name) as view:
        yield view
        view.check()


async def models_listed(view: BrowserPage, count: int) -> list[str]:
    """The picker's models, once it lists ``count``."""
    await view.page.wait_for_function(
        "n => document.querySelectorAll('#model option:not([disabled])').length === n", arg=count
    )
    return list(await view.page.eval_on_selector_all("#model option", "os => os.map(o => o.textContent)"))


async def ask(view: BrowserPage, model: str, text: str) -> None:
    await view.page.select_option("#model", value=model)
    await view.page.fill("#prompt", text)
    await view.page.click("#send")


async def answer_state(view: BrowserPage, state: str) -> str:
    """The last answer's text, once it is in ``state`` (streaming, done, stopped, error)."""
    await view.page.wait_for_selector(f'{LAST_ANSWER}[data-state="{state}"]')
    return str(await view.page.text_content(f"{LAST_ANSWER} .text"))


async def answer_words(view: BrowserPage, n: int) -> None:
    await view.page.wait_for_function(
        f"n => (document.querySelector('{LAST_ANSWER} .text')?.textContent || '').split(' ').length >= n",
        arg=n,
    )


WORDS = " ".join(f"w{i}" for i in range(40))
"""A prompt the slow echo model answers word by word, 0.2 s apart: long enough to act mid-answer."""


@contextlib.asynccontextmanager
async def mid_answer(browser_name: tuple[Path, str]) -> AsyncIterator[tuple[Net, BrowserPage]]:
    """Two nodes (a slow echo, LLAMA) behind a gateway, the page open, and the echo answering
    :data:`WORDS`: three words shown so far."""
    async with (
        network(EchoBackend(delay=0.2), EchoBackend(LLAMA)) as net,
        browse(net, browser_name) as view,
    ):
        await models_listed(view, 2)
        await ask(view, "echo", WORDS)
        await answer_words(view, 3)
        yield net, view


async def test_page_lists_the_models_and_the_nodes(browser_name: tuple[Path, str]) -> None:
    async with network(EchoBackend(), EchoBackend(LLAMA)) as net, browse(net, browser_name) as view:
        page = view.page
        assert await page.title() == "mimirlite chat"
        assert await models_listed(view, 2) == ["echo", LLAMA]
        await page.wait_for_function("() => document.querySelectorAll('#nodes .node').length === 2")
        shown = await page.eval_on_selector_all(
            "#nodes .node",
            """ns => ns.map(n => ({
                peer: n.querySelector('.peer').textContent,
                full: n.querySelector('.peer').title,
                models: [...n.querySelectorAll('.node-models li')].map(m => m.textContent),
                text: n.textContent,
            }))""",
        )
        expected = {str(h.peer_id): node.models for h, node in zip(net.hosts, net.nodes, strict=True)}
        assert {n["full"]: n["models"] for n in shown} == expected
        for n in shown:
            assert n["peer"] == short_peer(n["full"])
            assert "direct" in n["text"] and "first gen" in n["text"] and "0 in flight" in n["text"]
            assert "ping " in n["text"] and " ms · " in n["text"]
        await view.shot("loaded")


async def test_an_answer_streams_in_word_by_word(browser_name: tuple[Path, str]) -> None:
    text = "the answer grows one word at a time"
    async with (
        network(EchoBackend(delay=0.12), EchoBackend(LLAMA)) as net,
        browse(net, browser_name) as view,
    ):
        page = view.page
        await models_listed(view, 2)
        await page.evaluate(SNAPSHOTS)
        await ask(view, "echo", text)
        await answer_words(view, 3)
        await view.shot("streaming")
        assert await answer_state(view, "done") == text
        snaps = [s for s in await page.evaluate("window.snaps") if s]
        assert len(snaps) >= 3, snaps
        assert all(b.startswith(a) and len(b) > len(a) for a, b in itertools.pairwise(snaps)), snaps
        assert snaps[-1] == text
        # the conversation is kept: the second turn sends both earlier messages too
        await ask(view, LLAMA, "and a second question")
        assert await answer_state(view, "done") == "and a second question"
        roles = await page.eval_on_selector_all("#transcript .msg", "ms => ms.map(m => m.className)")
        assert roles == ["msg user", "msg assistant"] * 2
        await view.shot("conversation")
        await page.click("#new-chat")
        assert await page.eval_on_selector_all("#transcript .msg", "ms => ms.length") == 0
        await view.shot("new-chat")


async def test_stop_cancels_the_answer_on_the_node(browser_name: tuple[Path, str]) -> None:
    async with mid_answer(browser_name) as (net, view):
        page = view.page
        node = net.nodes[0]
        before = node.metrics.cancelled
        assert await page.is_visible("#stop") and not await page.is_visible("#send")
        await page.click("#stop")
        partial = await answer_state(view, "stopped")
        await until(lambda: node.metrics.cancelled == before + 1, WAIT, "the node saw the cancel")
        assert partial and WORDS.startswith(partial) and len(partial) < len(WORDS)
        assert await page.text_content(f"{LAST_ANSWER} .note") == "Stopped."
        assert await page.is_visible("#send") and not await page.is_visible("#stop")
        await view.shot("stopped")
        assert node.metrics.cancelled == before + 1


async def test_a_node_that_dies_mid_answer_shows_an_error(browser_name: tuple[Path, str]) -> None:
    async with mid_answer(browser_name) as (net, view):
        page = view.page
        await net.kill(0)
        partial = await answer_state(view, "error")
        assert WORDS.startswith(partial) and len(partial) < len(WORDS)
        note = str(await page.text_content(f"{LAST_ANSWER} .note"))
        assert "broke off" in note and str(net.hosts[0].peer_id) in note, note
        # the panel and the picker drop the node at their next refresh
        await page.wait_for_function("() => document.querySelectorAll('#nodes .node').length === 1")
        assert await models_listed(view, 1) == [LLAMA]
        await view.shot("node-died")


async def test_a_gateway_that_goes_away_mid_answer_shows_an_error(browser_name: tuple[Path, str]) -> None:
    async with mid_answer(browser_name) as (net, view):
        page = view.page
        await net.gateway.stop()  # the answer's HTTP body ends mid-chunk
        partial = await answer_state(view, "error")
        assert WORDS.startswith(partial) and len(partial) < len(WORDS)
        note = str(await page.text_content(f"{LAST_ANSWER} .note"))
        assert note.startswith("The answer broke off: the connection to the gateway failed"), note
        # the next refresh cannot reach the gateway: said at the top
        await page.wait_for_selector("#banner", state="visible")
        assert "Cannot list the models" in str(await page.text_content("#banner"))
        await view.shot("gateway-gone")


async def test_model_text_and_names_are_shown_as_text(browser_name: tuple[Path, str]) -> None:
    attack = '<script>alert(1)</script> <img src=x onerror=alert(2)> <b id="bold">x</b>'
    async with (
        network(EchoBackend(), EchoBackend(MARKUP_MODEL)) as net,
        browse(net, browser_name) as view,
    ):
        page = view.page
        assert sorted(await models_listed(view, 2)) == sorted(["echo", MARKUP_MODEL])
        await page.wait_for_function("() => document.querySelectorAll('#nodes .node').length === 2")
        listed = await page.eval_on_selector_all(".node-models li", "ls => ls.map(l => l.textContent)")
        assert sorted(listed) == sorted(["echo", MARKUP_MODEL])
        scripts = await page.evaluate("document.scripts.length")
        await ask(view, "echo", attack)
        assert await answer_state(view, "done") == attack
        await ask(view, MARKUP_MODEL, attack)
        assert await answer_state(view, "done") == attack
        assert await page.text_content(f"{LAST_ANSWER} .role") == MARKUP_MODEL
        assert await page.evaluate("document.scripts.length") == scripts == 1
        assert await page.evaluate("document.querySelectorAll('img, b, #bold').length") == 0
        await view.shot("markup-as-text")
        assert view.dialogs == []


async def test_the_page_asks_for_the_api_key_once(browser_name: tuple[Path, str]) -> None:
    async with (
        network(EchoBackend(), EchoBackend(LLAMA), api_key="s3cret-key") as net,
        browse(net, browser_name) as view,
    ):
        page = view.page
        gateway = net.gateway
        await page.wait_for_selector("#key-overlay", state="visible")
        await view.shot("asks-key")
        await page.fill("#key", "wrong")
        await page.click("#key-form button")
        await page.wait_for_selector("#key-error", state="visible")
        assert await page.text_content("#key-error") == "The gateway refused that key."
        await view.shot("key-refused")
        await page.fill("#key", "s3cret-key")
        await page.click("#key-form button")
        assert await models_listed(view, 2) == ["echo", LLAMA]
        assert await page.is_hidden("#key-overlay")
        await ask(view, "echo", "with the key")
        assert await answer_state(view, "done") == "with the key"
        assert await page.evaluate("sessionStorage.getItem('mimirlite.apiKey')") == "s3cret-key"
        refused = gateway.metrics.refused["auth"]
        await page.reload()
        assert await models_listed(view, 2) == ["echo", LLAMA]
        await page.wait_for_function("() => document.querySelectorAll('#nodes .node').length === 2")
        assert await page.is_hidden("#key-overlay")
        assert gateway.metrics.refused["auth"] == refused  # no call went without the key
        await view.shot("key-kept")


async def test_an_http_error_shows_the_gateways_message(browser_name: tuple[Path, str]) -> None:
    async with network(EchoBackend(), EchoBackend(LLAMA)) as net, browse(net, browser_name) as view:
        page = view.page
        await models_listed(view, 2)
        # a model no node serves (as when the picker is behind): the gateway's 404 message is shown
        # (in one turn of the page's loop, so that no refresh of the picker comes between)
        await page.evaluate(
            """() => {
                const o = document.createElement('option');
                o.value = o.textContent = 'gone:1b';
                document.getElementById('model').append(o);
                document.getElementById('model').value = 'gone:1b';
                document.getElementById('prompt').value = 'anyone there?';
                document.getElementById('send').click();
            }"""
        )
        await answer_state(view, "error")
        note = str(await page.text_content(f"{LAST_ANSWER} .note"))
        assert "gone:1b" in note and "(HTTP 404)" in note, note
        await view.shot("http-error")


REPLIES = {
    "What is mimirlite?": (
        "mimirlite shares language models peer to peer: nodes put their backends on the network, "
        "and this gateway turns the whole network into one OpenAI-compatible endpoint."
    ),
    "Which nodes answer?": (
        "Two nodes right now, listed on the right: one serves echo, the other llama3.2:latest. "
        "Each chat goes to the least busy node that serves the model."
    ),
}


async def test_a_conversation_through_a_real_backend(browser_name: tuple[Path, str]) -> None:
    """The picture in the README: a node in front of an OpenAI-compatible server, a conversation."""

    def reply(body: dict[str, Any]) -> str:
        return REPLIES.get(body["messages"][-1]["content"], "?")

    async with OpenAIServer(models=[LLAMA], reply=reply, delay=0.01) as srv:
        backend = OpenAIBackend(srv.base_url, timeout=WAIT)
        async with network(EchoBackend(), backend) as net, browse(net, browser_name) as view:
            page = view.page
            await models_listed(view, 2)
            await page.wait_for_function("() => document.querySelectorAll('#nodes .node').length === 2")
            for question, answer in REPLIES.items():
                await ask(view, LLAMA, question)
                assert await answer_state(view, "done") == answer
            # the second turn carried the whole conversation
            assert [m["role"] for m in srv.chat_requests[-1]["messages"]] == ["user", "assistant", "user"]
            await view.shot("readme")
