"""Add- and edit-plan and repository dialogs, with inline validation.

Each field shows its own error under it as soon as Save is pressed; nothing reaches the node
until the form is clean. The checks are core's own validators (names, cron, intervals,
retention), so the form and the node agree by construction; what only the node can know (a
name already taken, a wrong password) comes back from the admin API and is shown under the
field it is about. Dialogs are opened with ``open()``, never ``exec()``: no nested event loop.

Keyboard and size: a dialog opens with the focus on its first field, Tab leaves the multi-line
fields (it moves on instead of typing a tab), and an error is never cut: labels wrap, and the
dialog grows to show them (up to the screen's height; beyond that the form scrolls).

The edit dialogs are the add dialogs prefilled from what the node lists, with the name fixed;
they send only what changed (``PATCH``), so a field left alone keeps its value on the node.
"""

from __future__ import annotations

import asyncio
import os
import re
from pathlib import Path
from typing import Any

from PySide6.QtCore import QDir, Qt, QTimer, Signal
from PySide6.QtGui import QGuiApplication, QShowEvent
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QFileDialog,
    QFormLayout,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QLayout,
    QLineEdit,
    QPlainTextEdit,
    QPushButton,
    QScrollArea,
    QTextEdit,
    QVBoxLayout,
    QWidget,
)

from peerstash.core.engine import EngineError, check_name
from peerstash.core.records import PeerRecord, PlanRecord, RepoRecord
from peerstash.core.recovery import recovery_sheet, write_private
from peerstash.core.retention import RetentionPolicy
from peerstash.core.scheduler import parse_every, validate_cron
from peerstash.desktop.api import ApiError, PeersApi
from peerstash.desktop.backend import Backend, decode
from peerstash.desktop.tasks import Tasks
from peerstash.desktop.widgets import Banner, FieldError, choose_folder
from peerstash.peer.api import schema
from peerstash.peer.trust.permissions import GrantError, Grants

KEEP_FIELDS = ("last", "hourly", "daily", "weekly", "monthly", "yearly")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _widgets_of(thing: QWidget | QLayout | None) -> list[QWidget]:
    """The widgets of a field (a widget, or a layout of them), in layout order."""
    if thing is None:
        return []
    if isinstance(thing, QWidget):
        return [thing, *_widgets_of(thing.layout())]
    out: list[QWidget] = []
    for i in range(thing.count()):
        it = thing.itemAt(i)
        if it is not None:
            out += _widgets_of(it.widget()) + _widgets_of(it.layout())
    return out


def _lines(edit: QPlainTextEdit) -> list[str]:
    return [ln.strip() for ln in edit.toPlainText().splitlines() if ln.strip()]


class FormDialog(QDialog):
    """A dialog of fields with an error label under each, and a Save that talks to the node."""

    #: The node accepted the form; the payload is what it answered.
    created = Signal(object)

    def __init__(self, backend: Backend, title: str, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.backend = backend
        self.setWindowTitle(title)
        self.setMinimumWidth(520)
        self.tasks = Tasks(on_error=self._failed)
        self.errors: dict[str, FieldError] = {}
        #: The input widgets in the order of the form (the first enabled one gets the focus).
        self.inputs: list[QWidget] = []
        self.form = QFormLayout()
        self.form.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.ExpandingFieldsGrow)
        self.banner = Banner()
        self.buttons = QDialogButtonBox(
            QDialogButtonBox.StandardButton.Save | QDialogButtonBox.StandardButton.Cancel
        )
        self.save_button = self.buttons.button(QDialogButtonBox.StandardButton.Save)
        self.buttons.accepted.connect(self.submit)
        self.buttons.rejected.connect(self.reject)
        # The form scrolls when the screen is too low for it (a laptop at 200 %); the banner
        # and the buttons stay in view under it.
        self.form_body = body = QWidget()
        body.setLayout(self.form)
        self.form_scroll = QScrollArea()
        self.form_scroll.setWidget(body)
        self.form_scroll.setWidgetResizable(True)
        self.form_scroll.setFrameShape(QScrollArea.Shape.NoFrame)
        self.form_scroll.setFocusPolicy(Qt.FocusPolicy.NoFocus)  # not a stop for Tab
        self.form_scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.main_layout = layout = QVBoxLayout(self)
        layout.addWidget(self.form_scroll, 1)
        layout.addWidget(self.banner)
        layout.addWidget(self.buttons)
        self.submitting = False
        self._shown_once = False

    def showEvent(self, event: QShowEvent) -> None:
        super().showEvent(event)
        for edit in self.findChildren(QPlainTextEdit) + self.findChildren(QTextEdit):
            edit.setTabChangesFocus(True)
        if not self._shown_once:
            self._shown_once = True
            self.fit()
            first = self.first_field()
            if first is not None:
                first.setFocus(Qt.FocusReason.TabFocusReason)

    def first_field(self) -> QWidget | None:
        """The first field that takes input now (an edit dialog's fixed name is skipped)."""
        for w in self.inputs:
            if w.isEnabled() and w.isVisibleTo(self) and w.focusPolicy() & Qt.FocusPolicy.TabFocus:
                return w
        return None

    def fit(self) -> None:
        """As tall as the form, the banner and every shown error need, within the screen."""
        body = self.form_body
        body.adjustSize()
        layout = self.main_layout
        layout.activate()
        m = layout.contentsMargins()
        inner = self.width() - m.left() - m.right()
        need_form = body.heightForWidth(inner) if body.hasHeightForWidth() else -1
        if need_form < 0:
            need_form = body.sizeHint().height()
        banner = (
            self.banner.heightForWidth(inner) + layout.spacing()
            if self.banner.isVisibleTo(self)
            else 0
        )
        need = (
            m.top()
            + m.bottom()
            + need_form
            + banner
            + layout.spacing()
            + self.buttons.sizeHint().height()
            + 2 * self.form_scroll.frameWidth()
        )
        screen = self.screen()
        limit = screen.availableGeometry().height() - 40 if screen is not None else need
        self.form_scroll.setMinimumHeight(min(need_form, max(80, limit // 3)))
        height = min(need, limit)
        if height > self.height() or not self.isVisible():
            self.resize(self.width(), max(height, self.minimumSizeHint().height()))
        if self.isVisible():
            QTimer.singleShot(0, self._grow_by_scroll)

    def _grow_by_scroll(self) -> None:
        """What the estimate missed: grow by what the form would scroll, screen permitting."""
        missing = self.form_scroll.verticalScrollBar().maximum()
        screen = self.screen()
        if missing <= 0 or screen is None:
            return
        limit = screen.availableGeometry().height() - 40
        height = min(self.height() + missing, limit)
        if height > self.height():
            self.resize(self.width(), height)

    def add_field(self, key: str, label: str, widget: QWidget | Any, hint: str = "") -> None:
        box = QWidget()
        v = QVBoxLayout(box)
        v.setContentsMargins(0, 0, 0, 0)
        v.setSpacing(2)
        v.addWidget(widget) if isinstance(widget, QWidget) else v.addLayout(widget)
        self.inputs += _widgets_of(widget)
        if hint:
            h = QLabel(hint)
            h.setWordWrap(True)
            h.setStyleSheet("color:palette(placeholder-text);font-size:90%;")
            v.addWidget(h)
        err = FieldError()
        v.addWidget(err)
        self.errors[key] = err
        self.form.addRow(label, box)

    def field_errors(self) -> dict[str, str]:
        """The fields that currently show an error (for tests and the banner)."""
        return {k: e.text() for k, e in self.errors.items() if e.isVisible() or e.text()}

    def show_errors(self, errors: dict[str, str]) -> None:
        for key, err in self.errors.items():
            err.set_error(errors.get(key, ""))
        if errors:
            self.banner.show_message("Please correct the fields marked in red.", "error")
        else:
            self.banner.clear_message()
        self.fit()

    def validate(self) -> tuple[dict[str, str], schema.Request]:
        """Return (errors by field, request body): the route's struct from
        ``peer/api/schema.py``, so a misnamed field fails here (and in mypy), not at the node."""
        raise NotImplementedError

    def submit(self) -> None:
        if self.submitting:
            return
        errors, body = self.validate()
        self.show_errors(errors)
        if errors:
            return
        self.submitting = True
        self.save_button.setEnabled(False)
        self.banner.show_message(self.working_text(), "info")
        self.tasks.spawn(self._send(body), name="dialog:save")

    def working_text(self) -> str:
        return "Saving…"

    async def _send(self, body: schema.Request) -> None:
        try:
            result = await self.send(body)
        finally:
            self.submitting = False
            self.save_button.setEnabled(True)
        self.banner.clear_message()
        self.created.emit(result)
        self.accept()

    async def send(self, body: Any) -> Any:
        """Send what :meth:`validate` returned (each form's own struct)."""
        raise NotImplementedError

    #: This form's field for each request field the node may name in a refusal, where the two
    #: names differ (the rest are the same: ``paths``, ``uri``, ``options``...).
    api_fields: dict[str, str] = {}

    def server_field(self, api_field: str) -> str | None:
        """This form's field for the request field a refusal is about (the node's ``"field"``)."""
        return self.api_fields.get(api_field, api_field)

    def _failed(self, exc: BaseException) -> None:
        msg = str(exc) if isinstance(exc, ApiError) else f"unexpected error: {exc}"
        api_field = exc.field if isinstance(exc, ApiError) else None
        key = self.server_field(api_field) if api_field else None
        if key is not None and key in self.errors:
            self.errors[key].set_error(msg)
            self.banner.show_message("The node refused this; see the field marked in red.", "error")
        else:
            self.banner.show_message(msg, "error")
        self.fit()


class AddPlanDialog(FormDialog):
    #: The id of the plan being edited (None when adding).
    editing: str | None = None
    #: Paths the plan already has: not required to exist now (a disk may be unplugged).
    known_paths: frozenset[str] = frozenset()
    #: A new plan may start its first backup at once (the node does it, ``backup_now``).
    offers_backup_now = True

    def __init__(self, backend: Backend, parent: QWidget | None = None) -> None:
        super().__init__(backend, "Add a backup plan", parent)
        self.name = QLineEdit()
        self.name.setPlaceholderText("e.g. documents")
        self.add_field("name", "Name", self.name)

        self.repo = QComboBox()
        for r in backend.repos:
            if not r.origin:
                self.repo.addItem(r.id, r.id)
        self.add_field("repo", "Repository", self.repo)

        paths_box = QVBoxLayout()
        self.paths = QPlainTextEdit()
        self.paths.setPlaceholderText("/home/me/Documents\n/home/me/Pictures")
        self.paths.setFixedHeight(70)
        add_folder = QPushButton("Add folder…")
        add_folder.clicked.connect(self._choose_folder)
        paths_box.addWidget(self.paths)
        paths_box.addWidget(add_folder)
        self.add_field("paths", "Folders to back up", paths_box, "One absolute path per line.")

        self.excludes = QPlainTextEdit()
        self.excludes.setPlaceholderText("*.tmp\n/home/me/Downloads")
        self.excludes.setFixedHeight(54)
        self.add_field(
            "excludes", "Leave out", self.excludes, "restic exclude patterns, one per line."
        )

        sched = QHBoxLayout()
        self.schedule_kind = QComboBox()
        self.schedule_kind.addItem("Only when I ask", "manual")
        self.schedule_kind.addItem("Every…", "every")
        self.schedule_kind.addItem("Cron expression", "cron")
        self.schedule = QLineEdit()
        self.schedule.setPlaceholderText("e.g. 6h, 30m, 1d")
        self.schedule.setEnabled(False)
        self.schedule_kind.currentIndexChanged.connect(self._schedule_kind_changed)
        sched.addWidget(self.schedule_kind)
        sched.addWidget(self.schedule, 1)
        self.add_field("schedule", "Schedule", sched)

        grid = QGridLayout()
        self.keep: dict[str, QLineEdit] = {}
        for i, unit in enumerate(KEEP_FIELDS):
            edit = QLineEdit()
            edit.setPlaceholderText("—")
            edit.setMaximumWidth(70)
            self.keep[unit] = edit
            grid.addWidget(QLabel(unit), 0 if i < 3 else 2, i % 3)
            grid.addWidget(edit, 1 if i < 3 else 3, i % 3)
        self.keep_within = QLineEdit()
        self.keep_within.setPlaceholderText("e.g. 30d")
        self.keep_within.setMaximumWidth(110)
        grid.addWidget(QLabel("within"), 0, 3)
        grid.addWidget(self.keep_within, 1, 3)
        self.add_field(
            "retention",
            "Keep snapshots",
            grid,
            "How many to keep of each kind; leave empty to keep everything.",
        )
        self.backup_now = QCheckBox("Back up now")
        self.backup_now.setChecked(True)
        if self.offers_backup_now:
            self.add_field(
                "backup_now",
                "",
                self.backup_now,
                "Start the first backup as soon as the plan is saved: it is not protected before.",
            )
        self._folder_dialog: QFileDialog | None = None

    def _schedule_kind_changed(self) -> None:
        kind = self.schedule_kind.currentData()
        self.schedule.setEnabled(kind != "manual")
        self.schedule.setPlaceholderText(
            "e.g. 6h, 30m, 1d" if kind == "every" else "e.g. 0 3 * * * (03:00 every day)"
        )

    def _choose_folder(self) -> None:
        self._folder_dialog = choose_folder(self, "Choose a folder to back up", self._folder_chosen)

    def _folder_chosen(self, path: str) -> None:
        current = _lines(self.paths)
        if path and path not in current:
            self.paths.setPlainText("\n".join([*current, path]))

    def validate(self) -> tuple[dict[str, str], schema.Request]:
        return self.plan_form()

    def plan_form(self) -> tuple[dict[str, str], schema.AddPlan]:
        """(errors by field, the whole plan as the form says it)."""
        errors: dict[str, str] = {}
        name = self.name.text().strip()
        try:
            check_name("plan", name)
        except EngineError as exc:
            errors["name"] = "Give the plan a name." if not name else str(exc)
        if name != self.editing and any(p.id == name for p in self.backend.plans):
            errors["name"] = f"A plan named {name!r} already exists."
        repo = self.repo.currentData()
        if not repo:
            errors["repo"] = "Add a repository first (Plans & repositories → Add repository)."
        paths = _lines(self.paths)
        bad = []
        if not paths:
            errors["paths"] = "Give at least one folder or file to back up."
        for p in paths:
            if not os.path.isabs(p):
                bad.append(f"{p} is not an absolute path")
            elif not os.path.exists(p) and p not in self.known_paths:
                bad.append(f"{p} does not exist")
        if bad:
            errors["paths"] = "; ".join(bad)
        body = schema.AddPlan(
            id=name,
            repo=str(repo or ""),
            paths=paths,
            excludes=_lines(self.excludes),
            backup_now=self.backup_now.isChecked() if self.offers_backup_now else True,
        )
        kind = self.schedule_kind.currentData()
        text = self.schedule.text().strip()
        if kind != "manual":
            try:
                if not text:
                    raise ValueError(
                        "write an interval such as 6h"
                        if kind == "every"
                        else "write a cron expression"
                    )
                if kind == "every":
                    parse_every(text)
                    body.every = text
                else:
                    validate_cron(text)
                    body.schedule = text
            except ValueError as exc:
                errors["schedule"] = str(exc)[:1].upper() + str(exc)[1:]
        retention: dict[str, Any] = {}
        problems = []
        for unit, edit in self.keep.items():
            raw = edit.text().strip()
            if not raw:
                continue
            if not raw.isdigit():
                problems.append(f"keep {unit}: {raw!r} is not a whole number of 0 or more")
                continue
            if int(raw) > 0:
                retention[f"keep_{unit}"] = int(raw)
        within = self.keep_within.text().strip()
        if within:
            retention["keep_within"] = within
        if not problems:
            try:
                retention = RetentionPolicy.from_dict(retention).to_dict()
            except ValueError as exc:
                problems.append(str(exc))
        if problems:
            errors["retention"] = "; ".join(problems)
        body.retention = retention
        return errors, body

    def working_text(self) -> str:
        return "Adding the plan…"

    async def send(self, body: Any) -> Any:
        plan, _first = await self.backend.add_plan(body)  # the Operations page shows the first
        return plan

    api_fields = {"id": "name", "every": "schedule"}


PASSWORD_SOURCES = (
    ("secret", "Stored by Peerstash (encrypted)"),
    ("file", "Read from a file"),
    ("env", "From an environment variable of the node"),
    ("command", "Printed by a command"),
)


class AddRepoDialog(FormDialog):
    #: The id of the repository being edited (None when adding).
    editing: str | None = None

    def __init__(self, backend: Backend, parent: QWidget | None = None) -> None:
        super().__init__(backend, "Add a repository", parent)
        self.name = QLineEdit()
        self.name.setPlaceholderText("e.g. usb-disk")
        self.add_field("name", "Name", self.name)
        self.uri = QLineEdit()
        self.uri.setPlaceholderText("/media/me/backup  ·  sftp:host:/srv/restic  ·  rest:http://…")
        self.add_field("uri", "Location", self.uri, "Anything restic accepts as a repository.")

        self.source = QComboBox()
        for key, text in PASSWORD_SOURCES:
            self.source.addItem(text, key)
        self.source.currentIndexChanged.connect(self._source_changed)
        self.add_field("source", "Password", self.source)
        self.password = QLineEdit()
        self.password.setEchoMode(QLineEdit.EchoMode.Password)
        self.password2 = QLineEdit()
        self.password2.setEchoMode(QLineEdit.EchoMode.Password)
        self.password2.setPlaceholderText("repeat the password")
        pw = QVBoxLayout()
        pw.addWidget(self.password)
        pw.addWidget(self.password2)
        self.pw_box = QWidget()
        self.pw_box.setLayout(pw)
        pw.setContentsMargins(0, 0, 0, 0)
        self.add_field("password", "", self.pw_box)
        self.ref = QLineEdit()
        self.add_field("ref", "", self.ref)
        self.options = QPlainTextEdit()
        self.options.setPlaceholderText("sftp.command=ssh -p 2222 me@host -s sftp")
        self.options.setFixedHeight(48)
        self.add_field(
            "options", "restic options", self.options, "KEY=VALUE, one per line (optional)."
        )
        self.init = QCheckBox("Create the repository if it does not exist yet")
        self.init.setChecked(True)
        self.add_field("init", "", self.init)
        self._source_changed()

    def _source_changed(self) -> None:
        src = self.source.currentData()
        self.pw_box.setVisible(src == "secret")
        self.ref.setVisible(src != "secret")
        self.ref.setPlaceholderText(
            {
                "file": "/home/me/.config/restic-password",
                "env": "RESTIC_REPO_PASSWORD",
                "command": "pass show backup/restic",
            }.get(str(src), "")
        )
        for key in ("password", "ref"):
            self.errors[key].set_error("")

    def validate(self) -> tuple[dict[str, str], schema.Request]:
        return self.repo_form()

    def repo_form(self) -> tuple[dict[str, str], schema.AddRepo]:
        """(errors by field, the whole repository as the form says it)."""
        errors: dict[str, str] = {}
        name = self.name.text().strip()
        try:
            check_name("repository", name)
        except EngineError as exc:
            errors["name"] = "Give the repository a name." if not name else str(exc)
        if name != self.editing and any(r.id == name for r in self.backend.repos):
            errors["name"] = f"A repository named {name!r} already exists."
        uri = self.uri.text().strip()
        if not uri:
            errors["uri"] = "Say where the repository is (a folder, sftp:…, rest:…, s3:…)."
        elif ":" not in uri.split("/")[0] and not os.path.isabs(uri):
            errors["uri"] = "A local repository needs an absolute path, e.g. /media/me/backup."
        src = str(self.source.currentData())
        password = schema.Password(source=src)
        if src == "secret":
            if not self.password.text():
                errors["password"] = "Enter the repository's password."
            elif self.password.text() != self.password2.text():
                errors["password"] = "The two passwords differ."
            password.value = self.password.text()
        else:
            ref = self.ref.text().strip()
            if not ref:
                errors["ref"] = {
                    "file": "Give the file that holds the password.",
                    "env": "Give the name of the environment variable.",
                    "command": "Give the command that prints the password.",
                }[src]
            elif src == "file" and not os.path.isabs(ref):
                errors["ref"] = "The password file needs an absolute path."
            elif src == "file" and not os.path.isfile(ref):
                errors["ref"] = f"{ref} does not exist."
            elif src == "env" and not _ENV_NAME.match(ref):
                errors["ref"] = f"{ref!r} is not a valid environment variable name."
            password.ref = ref
        options = _lines(self.options)
        bad = [o for o in options if "=" not in o or o.startswith("=")]
        if bad:
            errors["options"] = f"Options must look like KEY=VALUE: {', '.join(bad)}"
        body = schema.AddRepo(
            id=name, uri=uri, password=password, options=options, init=self.init.isChecked()
        )
        return errors, body

    def working_text(self) -> str:
        return (
            "Opening the repository with restic…"
            if not self.init.isChecked()
            else ("Creating or opening the repository with restic…")
        )

    async def send(self, body: Any) -> Any:
        """(the repository's record, what the node said of it)."""
        return await self.backend.add_repo(body)

    api_fields = {"id": "name"}

    def server_field(self, api_field: str) -> str | None:
        if api_field == "password":  # the typed password, or where it comes from
            return "password" if self.source.currentData() == "secret" else "ref"
        return super().server_field(api_field)


def every_text(seconds: int) -> str:
    """``5400`` → ``"1h30m"``: an interval as a person writes it (and ``parse_every`` reads)."""
    out = []
    rest = int(seconds)
    for unit, size in (("w", 604800), ("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if rest >= size:
            out.append(f"{rest // size}{unit}")
            rest %= size
    return "".join(out) or "0s"


class EditPlanDialog(AddPlanDialog):
    """The add-plan form, filled from ``plan`` (as ``GET /v1/plans`` lists it); name fixed."""

    offers_backup_now = False

    def __init__(self, backend: Backend, plan: PlanRecord, parent: QWidget | None = None) -> None:
        super().__init__(backend, parent)
        self.plan = plan
        self.editing = plan.id
        self.known_paths = frozenset(plan.paths)
        self.setWindowTitle(f"Edit the plan {self.editing}")
        self.name.setText(self.editing)
        self.name.setEnabled(False)
        repo = plan.repo
        if self.repo.findData(repo) < 0:
            self.repo.addItem(repo, repo)
        self.repo.setCurrentIndex(self.repo.findData(repo))
        self.paths.setPlainText("\n".join(plan.paths))
        self.excludes.setPlainText("\n".join(plan.excludes))
        if plan.schedule:
            self.schedule_kind.setCurrentIndex(self.schedule_kind.findData("cron"))
            self.schedule.setText(plan.schedule)
        elif plan.every_seconds:
            self.schedule_kind.setCurrentIndex(self.schedule_kind.findData("every"))
            self.schedule.setText(every_text(plan.every_seconds))
        retention = plan.retention  # free-form keep_* settings: a dict
        for unit, edit in self.keep.items():
            value = retention.get(f"keep_{unit}")
            edit.setText(str(value) if value else "")
        self.keep_within.setText(str(retention.get("keep_within") or ""))
        self.enabled = QCheckBox("Enabled: its schedule runs")
        self.enabled.setChecked(plan.enabled)
        reason = plan.disabled_reason
        self.add_field("enabled", "", self.enabled, f"Disabled because: {reason}" if reason else "")

    def validate(self) -> tuple[dict[str, str], schema.Request]:
        """Only what differs from the plan as listed (a ``PATCH`` changes what it names)."""
        errors, full = self.plan_form()
        plan = self.plan
        body = schema.EditPlan()
        if full.repo != plan.repo:
            body.repo = full.repo
        if full.paths != plan.paths:
            body.paths = full.paths
        if full.excludes != plan.excludes:
            body.excludes = full.excludes
        if full.retention != plan.retention:
            body.retention = full.retention
        cron = full.schedule or None
        every = parse_every(full.every) if full.every else None
        if cron != (plan.schedule or None) or every != (plan.every_seconds or None):
            body.schedule = full.schedule or ""
            body.every = full.every or ""
        if self.enabled.isChecked() != plan.enabled:
            body.enabled = self.enabled.isChecked()
        return errors, body

    def working_text(self) -> str:
        return "Saving the plan…"

    async def send(self, body: Any) -> Any:
        if body == schema.EditPlan():  # nothing changed
            return self.plan
        return await self.backend.edit_plan(self.editing or "", body)


class EditRepoDialog(AddRepoDialog):
    """The add-repository form, filled from ``repo`` (as ``GET /v1/repos`` lists it).

    The name is fixed and "create" does not apply. A stored password is never shown: leaving
    the password empty keeps it. The node opens the repository with the new settings before it
    keeps them, so a wrong password is refused and the old settings stay.
    """

    def __init__(self, backend: Backend, repo: RepoRecord, parent: QWidget | None = None) -> None:
        super().__init__(backend, parent)
        self.repo_row = repo
        self.editing = repo.id
        self.setWindowTitle(f"Edit the repository {self.editing}")
        self.name.setText(self.editing)
        self.name.setEnabled(False)
        self.uri.setText(repo.uri)
        src = repo.password_source or "secret"
        self.source.setCurrentIndex(max(0, self.source.findData(src)))
        if src != "secret":
            self.ref.setText(repo.password_ref or "")
        self.password.setPlaceholderText("leave empty to keep the current password")
        self.options.setPlainText("\n".join(repo.options))
        self.init.setChecked(False)
        self.init.hide()
        self.form.setRowVisible(self.form.rowCount() - 1, False)
        # Password recovery: the stored password shown, copied or written to a recovery
        # sheet, each only on a click (the node hands it over on that request only).
        recovery = QHBoxLayout()
        self.revealed = QLineEdit()
        self.revealed.setReadOnly(True)
        self.revealed.setPlaceholderText("not shown")
        self.reveal_button = QPushButton("Show")
        self.reveal_button.clicked.connect(lambda: self._recovery("show"))
        self.copy_button = QPushButton("Copy")
        self.copy_button.clicked.connect(lambda: self._recovery("copy"))
        self.sheet_button = QPushButton("Save recovery sheet…")
        self.sheet_button.clicked.connect(self._choose_sheet)
        for w in (self.revealed, self.reveal_button, self.copy_button, self.sheet_button):
            recovery.addWidget(w, 1 if w is self.revealed else 0)
        self.add_field(
            "recovery",
            "Current password",
            recovery,
            "Keep it away from this computer: without it the backups cannot be read. The "
            "recovery sheet holds the location, the password and the restic command to open it.",
        )
        self.sheet_path: Path | None = None
        self._sheet_dialog: QFileDialog | None = None

    def validate(self) -> tuple[dict[str, str], schema.Request]:
        """Only what differs from the repository as listed (a ``PATCH``)."""
        errors, full = self.repo_form()
        repo = self.repo_row
        keep_secret = (
            repo.password_source == "secret"
            and full.password.source == "secret"
            and not self.password.text()
            and not self.password2.text()
        )
        if keep_secret:
            errors.pop("password", None)
        body = schema.EditRepo()
        if full.uri != repo.uri:
            body.uri = full.uri
        pw = full.password
        same_ref = pw.source != "secret" and (
            pw.source == repo.password_source and pw.ref == (repo.password_ref or "")
        )
        if not keep_secret and not same_ref:
            body.password = pw
        if full.options != repo.options:
            body.options = full.options
        return errors, body

    def _recovery(self, what: str) -> None:
        self.tasks.spawn(self.recover(what), name="dialog:recovery")

    async def recover(self, what: str, path: Path | None = None) -> None:
        """Show or copy the stored password, or write the recovery sheet to ``path``."""
        # Not a record: the password (or where it comes from) beside the repository's record.
        said = await self.backend.reveal_password(self.editing or "")
        password = said.get("password")
        if password is None:
            self.errors["recovery"].set_error(
                f"Peerstash does not store this password: {said.get('where')}."
            )
            return
        self.errors["recovery"].set_error("")
        if what == "show":
            self.revealed.setText(str(password))
        elif what == "copy":
            QGuiApplication.clipboard().setText(str(password))
            self.banner.show_message("The password is on the clipboard.", "ok")
        elif path is not None:
            repo = self.repo_row
            if said.get("repo") is not None:
                repo = decode(said["repo"], RepoRecord, "a repository")
            text = recovery_sheet(
                name=repo.id,
                uri=repo.uri,
                password=str(password),
                env_keys=repo.env_keys,
                options=repo.options,
                machine=self.backend.node_name or self.backend.instance_id,
            )
            try:
                await asyncio.to_thread(write_private, path, text)
            except OSError as exc:
                self.errors["recovery"].set_error(f"Could not write {path}: {exc.strerror or exc}")
                return
            self.sheet_path = path
            self.banner.show_message(
                f"Recovery sheet saved to {path} (mode 0600: only you can read it). Print it "
                "or move it off this computer.",
                "ok",
            )

    def _choose_sheet(self) -> None:
        start = str(Path(QDir.homePath()) / f"peerstash-recovery-{self.editing}.txt")
        dlg = QFileDialog(self, "Save the recovery sheet", start)
        dlg.setAcceptMode(QFileDialog.AcceptMode.AcceptSave)
        dlg.setDefaultSuffix("txt")
        dlg.fileSelected.connect(lambda p: self.tasks.spawn(self.recover("sheet", Path(p))))
        self._sheet_dialog = dlg
        dlg.open()

    def working_text(self) -> str:
        return "Opening the repository with the new settings…"

    async def send(self, body: Any) -> Any:
        if body == schema.EditRepo():
            return self.repo_row, "nothing changed"
        repo = await self.backend.edit_repo(self.editing or "", body)
        return repo, "changed; it opens with the new settings"


#: What each grant lets the peer do here (DESIGN.md, "Permissions").
GRANT_WORDS = {
    "ops": "see this machine's operations",
    "config.read": "read plans and repositories (never secrets)",
    "config.write": "create and change plans and repositories",
    "repos.receive": "share its repositories into this machine's settings",
    "run": "start plans, browse snapshots and restore here",
}


def split_grants(grants: Any) -> dict[str, str]:
    """``["ops:*", "run:plan:a,!repo:b"]`` → ``{"ops": "*", "run": "plan:a, !repo:b"}``."""
    out: dict[str, list[str]] = {}
    for entry in grants or []:
        name, _, scope = str(entry).partition(":")
        out.setdefault(name.strip(), []).extend(
            s.strip() for s in (scope or "*").split(",") if s.strip()
        )
    return {name: ", ".join(dict.fromkeys(scopes)) for name, scopes in out.items()}


class EditGrantsDialog(FormDialog):
    """What we allow one peer: a checkbox per grant, each with its scope (``*`` = everything).

    Saving replaces the peer's grants (``PATCH /v1/peers/{id}``); the node restarts the link so
    they apply at once.
    """

    def __init__(self, backend: Backend, peer: PeerRecord, parent: QWidget | None = None) -> None:
        super().__init__(backend, f"What {peer.id} may do here", parent)
        self.peer = peer
        self.peer_id = peer.id
        current = split_grants(peer.grants)
        grid = QGridLayout()
        self.boxes: dict[str, QCheckBox] = {}
        self.scopes: dict[str, QLineEdit] = {}
        for row, g in enumerate(PeersApi.GRANTS):
            cb = QCheckBox(g)
            cb.setChecked(g in current)
            cb.setToolTip(GRANT_WORDS.get(g, ""))
            scope = QLineEdit(current.get(g, "*"))
            scope.setPlaceholderText("* (everything)")
            scope.setEnabled(cb.isChecked())
            cb.toggled.connect(scope.setEnabled)
            words = QLabel(GRANT_WORDS.get(g, ""))
            words.setStyleSheet("color:palette(placeholder-text);")
            grid.addWidget(cb, row, 0)
            grid.addWidget(scope, row, 1)
            grid.addWidget(words, row, 2)
            self.boxes[g], self.scopes[g] = cb, scope
        self.add_field(
            "grants",
            "It may",
            grid,
            "Scope: * for everything, or repo:ID, plan:ID, and !repo:ID, !plan:ID to leave "
            "one out, separated by commas. Nothing ticked: it may do nothing here.",
        )

    def validate(self) -> tuple[dict[str, str], schema.Request]:
        entries = []
        for g, cb in self.boxes.items():
            if not cb.isChecked():
                continue
            scopes = [s.strip() for s in self.scopes[g].text().split(",") if s.strip()]
            entries.append(f"{g}:{','.join(scopes or ['*'])}")
        errors: dict[str, str] = {}
        try:
            entries = Grants.parse(entries).to_strings()
        except GrantError as exc:
            errors["grants"] = str(exc)[:1].upper() + str(exc)[1:]
        return errors, schema.Grants(grants=entries)

    def working_text(self) -> str:
        return "Saving; the link restarts so the change applies now…"

    async def send(self, body: Any) -> Any:
        peer = await self.backend.peers.set_grants(self.peer_id, body.grants)
        await self.backend.refresh_peers()
        return peer
