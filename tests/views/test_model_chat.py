"""The window's chat with no run (issue 16, item 7): a user picks the real SmolLM2 in the Model
tab, loads it, writes a system prompt and talks; the answer streams in once, from its first
character; the conversation is listed and kept for the next start of the window."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PySide6.QtCore import Qt
from pytestqt.qtbot import QtBot

from qhybrid.models._conversations import ConversationsModel, ConversationStore
from qhybrid.models._local_chat import ChatSettings, LocalChat
from qhybrid.runtime import AgentLog, LlmTokens
from qhybrid.views import MainWindow
from qhybrid.views._chat_standalone import StandaloneChatPanel


@pytest.fixture(scope="session")
def smollm2() -> Path:
    from qhybrid.runtime.llm._fetch import FetchError, fetch_model

    try:
        return fetch_model("smollm2")
    except FetchError as exc:
        if exc.offline:
            pytest.skip(f"off-line, cannot fetch the real model smollm2: {exc}")
        raise


def _choose(panel: StandaloneChatPanel, path: Path) -> None:
    index = panel.model_combo.findData(str(path))
    assert index >= 0, [panel.model_combo.itemText(i) for i in range(panel.model_combo.count())]
    panel.model_combo.setCurrentIndex(index)


def test_the_window_chats_with_a_real_model_and_no_run(
    qtbot: QtBot, smollm2: Path, isolated_data_dir: Path
) -> None:
    window = MainWindow()
    qtbot.addWidget(window)
    window.show()
    panel = window.model_chat_panel
    assert window.chat_tabs.currentWidget() is panel  # what a new user sees first
    assert window.controller.state == "idle"
    _choose(panel, smollm2)
    assert not panel.input.isEnabled()
    qtbot.mouseClick(panel.load_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: panel.chat.ready and panel.input.isEnabled(), timeout=60_000)
    assert "chat template" in panel.status_label.full_text
    assert not panel.progress.isVisible()
    window.conversations.settings = ChatSettings(max_tokens=24, temperature=0.0)

    panel.system_edit.setPlainText("You are a helpful assistant. Answer briefly.")
    shown: list[str] = []
    window.conversations.transcript_changed.connect(
        lambda: shown.append(panel.transcript.toPlainText())
    )
    qtbot.keyClicks(panel.input, "What is the capital of France?")
    qtbot.keyClick(panel.input, Qt.Key.Key_Return)
    assert panel.stop_button.isEnabled()
    qtbot.waitUntil(lambda: not window.conversations.busy, timeout=60_000)
    qtbot.waitUntil(lambda: "Paris" in panel.transcript.toPlainText(), timeout=5_000)
    text = panel.transcript.toPlainText()
    # Once, and from its first character: "Le Grand Paris is ...", not " Le" or "e Grand".
    assert text.count("you: What is the capital of France?") == 1
    assert f"{smollm2.name}: " in text  # the model's turn, by its listed name
    answer = text.split(f"{smollm2.name}: ", 1)[1].strip()
    assert answer[0].isupper(), text  # a sentence's first letter, not a word's middle
    assert "\N{HORIZONTAL ELLIPSIS}" not in answer, text  # shown as ended
    assert text.count(answer.split(".")[0]) == 1
    assert not panel.stop_button.isEnabled() and panel.send_button.isEnabled()
    # The conversation is listed, titled by its first question, and kept on disk.
    assert window.conversations.rowCount() == 1
    assert window.conversations.data(window.conversations.index(0)) == (
        "What is the capital of France?"
    )
    saved = list((isolated_data_dir / "qhybrid" / "chats").glob("*.json"))
    assert len(saved) == 1
    kept = json.loads(saved[0].read_text("utf-8"))
    assert kept["system"] == "You are a helpful assistant. Answer briefly."
    assert "Paris" in kept["turns"][1]["content"]
    window.close()
    assert window.local_chat._thread is None  # the model's threads are gone with the window

    # The next start of the window lists it, and shows it.
    again = MainWindow()
    qtbot.addWidget(again)
    assert again.conversations.rowCount() == 1
    assert "Paris" in again.model_chat_panel.transcript.toPlainText()
    assert again.model_chat_panel.system_edit.toPlainText().startswith("You are a helpful")
    again.close()


def test_a_corrupt_model_file_shows_a_message_in_the_panel(qtbot: QtBot, tmp_path: Path) -> None:
    chat = LocalChat(device="cpu")
    model = ConversationsModel(chat, ConversationStore(tmp_path / "chats"))
    panel = StandaloneChatPanel(model)
    qtbot.addWidget(panel)
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF\x03\x00\x00\x00" + b"\x00" * 40)
    try:
        with qtbot.waitSignal(chat.load_failed, timeout=30_000):
            chat.load(bad)
        assert "Cannot load broken.gguf" in panel.status_label.full_text
        assert str(bad) in panel.status_label.full_text
        assert "Traceback" not in panel.status_label.full_text
        assert not panel.progress.isVisible()
        panel.input.setText("hello")
        panel.send()
        assert "Choose a model and press Load first" in panel.status_label.full_text
    finally:
        chat.close()


def test_conversations_list_new_and_delete(qtbot: QtBot, tmp_path: Path) -> None:
    chat = LocalChat(device="cpu")
    model = ConversationsModel(chat, ConversationStore(tmp_path / "chats"))
    panel = StandaloneChatPanel(model)
    qtbot.addWidget(panel)
    panel.system_edit.setPlainText("first")
    qtbot.mouseClick(panel.new_button, Qt.MouseButton.LeftButton)
    panel.system_edit.setPlainText("second")
    assert model.rowCount() == 2
    assert model.current is not None and model.current.system == "second"
    panel.list_view.setCurrentIndex(model.index(1))
    assert panel.system_edit.toPlainText() == "first"
    qtbot.mouseClick(panel.delete_button, Qt.MouseButton.LeftButton)
    assert model.rowCount() == 1
    chat.close()


def test_in_a_run_an_answer_is_shown_once(qtbot: QtBot) -> None:
    """Inside a run the chat talks to an LLM agent: its streamed answer, and not the agent's
    own "answer: ..." log line as a second copy."""
    from qhybrid.models import ChatModel

    chat = ChatModel()
    chat.add_user_message("ask", "Once upon a time")
    chat.apply([LlmTokens(3, "ask", "there was", 2, False), LlmTokens(3, "ask", " a cat", 2, True)])
    chat.apply([], [AgentLog("ask", 20, "answer: there was a cat", 4)])
    chat.apply([], [AgentLog("ask", 30, "llm error: out of slots", 5)])
    texts = [e.text for e in chat.entries]
    assert texts == ["Once upon a time", "there was a cat", "llm error: out of slots"]


def test_in_a_run_an_answer_that_completes_its_prompt_never_reads_mid_word() -> None:
    from qhybrid.models import ChatModel
    from qhybrid.views._chat import _entry_html

    chat = ChatModel()
    chat.add_user_message("ask", "Once upon a time")
    chat.apply([LlmTokens(3, "ask", ", there was", 2, True, finish="stop")])
    chat.apply([LlmTokens(4, "story", ", Buster walked", 2, True, finish="stop")])
    chat.apply([LlmTokens(5, "story", "Buster ran.", 2, True, finish="stop")])
    mine, scenarios, whole = (_entry_html(e) for e in chat.entries[1:])
    # The user's prompt, in grey, before its continuation; a scenario's prompt: an ellipsis.
    assert "<span style='color:gray'>Once upon a time</span>, there was" in mine
    assert ":</b> \N{HORIZONTAL ELLIPSIS}, Buster walked" in scenarios
    assert ":</b> Buster ran." in whole


def test_a_runs_llm_answers_bring_the_run_chat_forward_unless_a_model_chat_is_in_use(
    qtbot: QtBot,
) -> None:
    window = MainWindow()
    qtbot.addWidget(window)
    assert window.chat_tabs.currentWidget() is window.model_chat_panel
    window.live.chat.apply([LlmTokens(1, "storyteller-0", "Once", 1, False)])
    assert window.chat_tabs.currentWidget() is window.chat_panel
    window.chat_tabs.setCurrentWidget(window.model_chat_panel)
    window.local_chat.model_name = "a model"  # as once one is loaded
    window.live.chat.apply([LlmTokens(1, "storyteller-0", " upon", 1, False)])
    assert window.chat_tabs.currentWidget() is window.model_chat_panel
    window.local_chat.model_name = None
