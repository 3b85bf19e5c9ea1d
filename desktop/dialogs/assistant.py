"""The first-run assistant: from nothing to a first backup, one question per page.

Repository (where) → password (generated or typed) → folders → schedule and retention → "keep
your password somewhere else" (show, copy, recovery sheet) → create. Nothing reaches the node
before the last page; there the assistant makes the same admin calls as the Add repository and
Add plan dialogs (``POST /v1/repos`` with ``init``, then ``POST /v1/plans`` with
``backup_now``) and follows the first backup to its end.

A refusal from the node is shown on the page it is about (a wrong URI or a failed ``init`` on
the repository page, a refused password on the password page), and the node keeps nothing of a
repository it could not create. If the repository was created but the plan was refused, the
assistant says so plainly, keeps the repository (it works) and lets the plan step be retried;
the repository pages are then locked, since what they describe exists.

It opens by itself when the node has neither a repository nor a plan (see ``DesktopApp``), and
from "Set up a backup…" (tray menu, Plans page) later. Opened with ``open()``, never ``exec()``.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from urllib.parse import quote

from PySide6.QtCore import QDir, QTime, Signal
from PySide6.QtGui import QGuiApplication
from PySide6.QtWidgets import (
    QButtonGroup,
    QCheckBox,
    QComboBox,
    QDialog,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QPushButton,
    QRadioButton,
    QStackedWidget,
    QTimeEdit,
    QVBoxLayout,
    QWidget,
)

from peerstash.core.engine import EngineError, check_name, split_uri_password
from peerstash.core.ops import FINISHED
from peerstash.core.records import OpRecord, PlanRecord
from peerstash.core.recovery import generate_password, recovery_sheet, write_private
from peerstash.core.retention import RetentionPolicy
from peerstash.core.scheduler import validate_cron
from peerstash.desktop.api import ApiError, q
from peerstash.desktop.backend import Backend, decode
from peerstash.desktop.tasks import Tasks
from peerstash.desktop.widgets import Banner, FieldError, choose_folder
from peerstash.peer.api import schema

#: Kept after each backup (older snapshots of the plan are forgotten): said on the page.
DEFAULT_RETENTION = {"keep_daily": 7, "keep_weekly": 4, "keep_monthly": 12}
RETENTION_WORDS = (
    "Keep one snapshot a day for 7 days, one a week for 4 weeks and one a month for 12 months; "
    "older snapshots of this plan are forgotten after each backup."
)
REPO_KINDS = (
    ("local", "A folder (USB disk, mounted NAS…)"),
    ("sftp", "A server over SFTP (ssh)"),
    ("rest", "A restic REST server"),
    ("s3", "S3 or S3-compatible storage"),
)
PAGES = ("repo", "password", "folders", "schedule", "keep", "create")


def _free_name(base: str, taken: set[str]) -> str:
    name, n = base, 2
    while name in taken:
        name, n = f"{base}-{n}", n + 1
    return name


def build_repo_uri(kind: str, f: dict[str, str]) -> tuple[str, dict[str, str], dict[str, str]]:
    """(restic URI, extra environment, errors by field) from the repository page's fields.

    The URI is exactly what restic documents for each backend; an S3 key pair goes into the
    environment (kept secret by the node), a REST password into the URI (sealed by the node).
    """
    errors: dict[str, str] = {}
    env: dict[str, str] = {}

    def need(key: str, what: str) -> str:
        value = f.get(key, "").strip()
        if not value:
            errors[key] = f"Give {what}."
        return value

    if kind == "local":
        path = need("path", "the folder that will hold the backups")
        if path and not os.path.isabs(os.path.expanduser(path)):
            errors["path"] = "Give an absolute path, e.g. /media/me/backup."
        return os.path.expanduser(path), env, errors
    if kind == "sftp":
        host = need("host", "the server's name or address")
        path = need("sftp_path", "the folder on the server")
        user = f.get("user", "").strip()
        port = f.get("port", "").strip()
        who = f"{user}@{host}" if user else host
        if host.startswith("-") or user.startswith("-") or any(c.isspace() for c in who):
            errors["host"] = "The server and user may not contain spaces or start with '-'."
        if port and port != "22":
            # restic's URL form takes a port; the path after host:port/ is relative unless it
            # starts with another "/" (sftp://me@nas:2222//srv/restic).
            return f"sftp://{who}:{port}/{path}", env, errors
        return f"sftp:{who}:{path}", env, errors
    if kind == "rest":
        url = need("url", "the server's address, e.g. https://backup.example.com:8000/me")
        if url and not url.startswith(("http://", "https://")):
            errors["url"] = "The address starts with https:// (or http:// on a trusted network)."
        user = f.get("rest_user", "").strip()
        password = f.get("rest_password", "")
        if url and not errors and user:
            scheme, _, rest = url.partition("://")
            cred = quote(user, safe="")
            if password:
                cred += ":" + quote(password, safe="")
            url = f"{scheme}://{cred}@{rest}"
        return f"rest:{url}", env, errors
    # s3
    endpoint = f.get("endpoint", "").strip() or "s3.amazonaws.com"
    bucket = need("bucket", "the bucket's name")
    prefix = f.get("prefix", "").strip().strip("/")
    key_id = need("key_id", "the access key id")
    secret = need("secret_key", "the secret access key")
    if "://" not in endpoint:
        endpoint = "https://" + endpoint
    uri = f"s3:{endpoint.rstrip('/')}/{bucket}" + (f"/{prefix}" if prefix else "")
    if key_id and secret:
        env = {"AWS_ACCESS_KEY_ID": key_id, "AWS_SECRET_ACCESS_KEY": secret}
    return uri, env, errors


def _page(title: str, intro: str) -> tuple[QWidget, QVBoxLayout]:
    page = QWidget()
    v = QVBoxLayout(page)
    head = QLabel(f"<h3>{title}</h3>")
    v.addWidget(head)
    if intro:
        words = QLabel(intro)
        words.setWordWrap(True)
        v.addWidget(words)
    return page, v


def _row(
    form: QFormLayout,
    label: str,
    widget: QWidget,
    errors: dict[str, FieldError],
    key: str,
    buddy: QWidget | None = None,
) -> None:
    """A form row: ``widget`` with its error line under it. The label's mnemonic (Alt+letter)
    focuses ``buddy`` (the field itself unless ``widget`` is a row of several)."""
    box = QWidget()
    v = QVBoxLayout(box)
    v.setContentsMargins(0, 0, 0, 0)
    v.setSpacing(2)
    v.addWidget(widget)
    err = FieldError()
    v.addWidget(err)
    errors[key] = err
    name = QLabel(label)
    name.setBuddy(buddy or widget)
    form.addRow(name, box)


class SetupAssistant(QDialog):
    """Set up a repository, a password kept elsewhere, a plan, and start its first backup."""

    #: Everything exists and the first backup was started: the plan as the node answered.
    setupDone = Signal(object)

    def __init__(self, backend: Backend, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.backend = backend
        self.setWindowTitle("Set up a backup")
        self.setMinimumWidth(600)
        self.tasks = Tasks(on_error=self._unexpected)
        self.errors: dict[str, FieldError] = {}
        self.banners: dict[str, Banner] = {}
        #: The repository id once the node created it (then its pages are locked).
        self.repo_created: str | None = None
        self.plan: PlanRecord | None = None
        #: The first backup as the node last told it (None before it was started).
        self.first_op: OpRecord | None = None
        self.sheet_path: Path | None = None
        #: The (location, password) the saved sheet holds: a later change makes it stale.
        self.sheet_for: tuple[str, str] | None = None
        self._dialog: QFileDialog | None = None
        self._cancel_warned = False

        self.stack = QStackedWidget()
        self.stack.addWidget(self._repo_page())
        self.stack.addWidget(self._password_page())
        self.stack.addWidget(self._folders_page())
        self.stack.addWidget(self._schedule_page())
        self.stack.addWidget(self._keep_page())
        self.stack.addWidget(self._create_page())

        self.step = QLabel()
        self.back_button = QPushButton("&Back")
        self.next_button = QPushButton("&Next")
        self.next_button.setDefault(True)
        self.cancel_button = QPushButton("Cancel")
        self.back_button.clicked.connect(self.back)
        self.next_button.clicked.connect(self.next)
        self.cancel_button.clicked.connect(self.reject)
        buttons = QHBoxLayout()
        buttons.addWidget(self.step)
        buttons.addStretch(1)
        for b in (self.cancel_button, self.back_button, self.next_button):
            buttons.addWidget(b)
        layout = QVBoxLayout(self)
        layout.addWidget(self.stack, 1)
        layout.addLayout(buttons)
        backend.opChanged.connect(self._op_changed)
        self._show_page(0)

    # -- pages -------------------------------------------------------------------------------

    def _banner(self, key: str, v: QVBoxLayout) -> None:
        self.banners[key] = Banner()
        v.addWidget(self.banners[key])

    def _repo_page(self) -> QWidget:
        page, v = _page(
            "Where should the backups go?",
            "Somewhere that does not fail with this computer: another disk, a server, "
            "cloud storage. Peerstash creates a restic repository there.",
        )
        form = QFormLayout()
        taken = {r.id for r in self.backend.repos}
        self.repo_name = QLineEdit(_free_name("backup", taken))
        _row(form, "Na&me", self.repo_name, self.errors, "repo_name")
        self.kind = QComboBox()
        for key, text in REPO_KINDS:
            self.kind.addItem(text, key)
        _row(form, "&Kind", self.kind, self.errors, "kind")
        v.addLayout(form)

        self.kind_stack = QStackedWidget()
        self.fields: dict[str, QLineEdit] = {}

        def edit(key: str, placeholder: str = "", secret: bool = False) -> QLineEdit:
            e = QLineEdit()
            e.setPlaceholderText(placeholder)
            if secret:
                e.setEchoMode(QLineEdit.EchoMode.Password)
            self.fields[key] = e
            return e

        local = QWidget()
        lf = QFormLayout(local)
        path_row = QWidget()
        ph = QHBoxLayout(path_row)
        ph.setContentsMargins(0, 0, 0, 0)
        ph.addWidget(edit("path", "/media/me/backup"), 1)
        self.browse_button = QPushButton("Browse…")
        self.browse_button.clicked.connect(self._browse_repo)
        ph.addWidget(self.browse_button)
        _row(lf, "&Folder", path_row, self.errors, "path", self.fields["path"])
        sftp = QWidget()
        sf = QFormLayout(sftp)
        _row(sf, "Server", edit("host", "nas.local"), self.errors, "host")
        _row(sf, "User", edit("user", "me (optional)"), self.errors, "user")
        _row(sf, "Port", edit("port", "22"), self.errors, "port")
        _row(sf, "Folder there", edit("sftp_path", "/srv/backups/laptop"), self.errors, "sftp_path")
        hint = QLabel("Log-in is by your ssh key (ssh-agent or ~/.ssh/config), as for ssh.")
        hint.setWordWrap(True)
        sf.addRow("", hint)
        rest = QWidget()
        rf = QFormLayout(rest)
        _row(
            rf, "Address", edit("url", "https://backup.example.com:8000/laptop"), self.errors, "url"
        )
        _row(rf, "User", edit("rest_user", "optional"), self.errors, "rest_user")
        _row(rf, "Password", edit("rest_password", "optional", True), self.errors, "rest_password")
        s3 = QWidget()
        s3f = QFormLayout(s3)
        _row(s3f, "Endpoint", edit("endpoint", "s3.amazonaws.com"), self.errors, "endpoint")
        _row(s3f, "Bucket", edit("bucket", "my-backups"), self.errors, "bucket")
        _row(s3f, "Folder in it", edit("prefix", "laptop (optional)"), self.errors, "prefix")
        _row(s3f, "Access key id", edit("key_id"), self.errors, "key_id")
        _row(s3f, "Secret key", edit("secret_key", "", True), self.errors, "secret_key")
        for w in (local, sftp, rest, s3):
            self.kind_stack.addWidget(w)
        self.kind.currentIndexChanged.connect(self.kind_stack.setCurrentIndex)
        v.addWidget(self.kind_stack)
        self.uri_preview = QLabel()
        self.uri_preview.setWordWrap(True)
        self.uri_preview.setStyleSheet("color:palette(placeholder-text);")
        v.addWidget(self.uri_preview)
        for e in self.fields.values():
            e.textChanged.connect(self._preview_uri)
        self.kind.currentIndexChanged.connect(self._preview_uri)
        self._preview_uri()
        v.addStretch(1)
        self._banner("repo", v)
        return page

    def _password_page(self) -> QWidget:
        page, v = _page(
            "The repository's password",
            "Everything in the repository is encrypted with this password. Without it nobody "
            "can read the backups, not even you: the next pages help you keep it elsewhere.",
        )
        self.pw_generate = QRadioButton("Generate a strong password (recommended)")
        self.pw_own = QRadioButton("Use my own password")
        self.pw_generate.setChecked(True)
        group = QButtonGroup(page)
        group.addButton(self.pw_generate)
        group.addButton(self.pw_own)
        v.addWidget(self.pw_generate)
        gen_row = QHBoxLayout()
        self.generated = QLineEdit(generate_password())
        self.generated.setReadOnly(True)
        self.generated.setEchoMode(QLineEdit.EchoMode.Password)
        self.pw_show = QCheckBox("Show")
        self.pw_show.toggled.connect(self._show_password)
        self.pw_copy = QPushButton("Copy")
        self.pw_copy.clicked.connect(self.copy_password)
        self.pw_new = QPushButton("Another")
        self.pw_new.clicked.connect(lambda: self.generated.setText(generate_password()))
        for w in (self.generated, self.pw_show, self.pw_copy, self.pw_new):
            gen_row.addWidget(w, 1 if w is self.generated else 0)
        v.addLayout(gen_row)
        v.addWidget(self.pw_own)
        own = QFormLayout()
        self.own_password = QLineEdit()
        self.own_password.setEchoMode(QLineEdit.EchoMode.Password)
        self.own_password2 = QLineEdit()
        self.own_password2.setEchoMode(QLineEdit.EchoMode.Password)
        self.own_password2.setPlaceholderText("repeat it")
        _row(own, "Password", self.own_password, self.errors, "password")
        own.addRow("", self.own_password2)
        v.addLayout(own)
        self.pw_own.toggled.connect(self._password_kind)
        self._password_kind()
        v.addStretch(1)
        self._banner("password", v)
        return page

    def _folders_page(self) -> QWidget:
        page, v = _page("What should be backed up?", "Add the folders that matter to you.")
        self.folders = QListWidget()
        v.addWidget(self.folders, 1)
        row = QHBoxLayout()
        self.add_folder_button = QPushButton("&Add folder…")
        self.add_folder_button.clicked.connect(self._browse_folder)
        self.remove_folder_button = QPushButton("Remove")
        self.remove_folder_button.clicked.connect(self.remove_selected_folder)
        row.addWidget(self.add_folder_button)
        row.addWidget(self.remove_folder_button)
        row.addStretch(1)
        v.addLayout(row)
        self.errors["folders"] = FieldError()
        v.addWidget(self.errors["folders"])
        self._banner("folders", v)
        return page

    def _schedule_page(self) -> QWidget:
        page, v = _page("When?", "Backups run by themselves while this computer is on.")
        form = QFormLayout()
        taken = {p.id for p in self.backend.plans}
        self.plan_name = QLineEdit(_free_name("my-files", taken))
        _row(form, "Plan na&me", self.plan_name, self.errors, "plan_name")
        when = QWidget()
        wh = QHBoxLayout(when)
        wh.setContentsMargins(0, 0, 0, 0)
        self.preset = QComboBox()
        self.preset.addItem("Every day at", "daily")
        self.preset.addItem("Every hour", "hourly")
        self.preset.addItem("Cron expression (for experts)", "cron")
        self.at = QTimeEdit(QTime(12, 30))
        self.at.setDisplayFormat("HH:mm")
        self.cron = QLineEdit()
        self.cron.setPlaceholderText("e.g. 0 */4 * * * (every 4 hours)")
        wh.addWidget(self.preset)
        wh.addWidget(self.at)
        wh.addWidget(self.cron, 1)
        self.preset.currentIndexChanged.connect(self._preset_changed)
        self._preset_changed()
        _row(form, "Back &up", when, self.errors, "schedule", self.preset)
        v.addLayout(form)
        self.keep_default = QCheckBox("Thin out old snapshots")
        self.keep_default.setChecked(True)
        v.addWidget(self.keep_default)
        words = QLabel(RETENTION_WORDS + " Untick to keep every snapshot.")
        words.setWordWrap(True)
        v.addWidget(words)
        v.addStretch(1)
        self._banner("schedule", v)
        return page

    def _keep_page(self) -> QWidget:
        page, v = _page(
            "Keep your password somewhere else",
            "If this computer is lost, the backups are all you have, and they open only with "
            "the password. Copy it into a password manager, or save the recovery sheet and "
            "print it or put it away from this computer.",
        )
        row = QHBoxLayout()
        self.keep_password = QLineEdit()
        self.keep_password.setReadOnly(True)
        self.keep_password.setEchoMode(QLineEdit.EchoMode.Password)
        self.keep_show = QCheckBox("Show")
        self.keep_show.toggled.connect(self._show_password)
        self.keep_copy = QPushButton("Copy")
        self.keep_copy.clicked.connect(self.copy_password)
        row.addWidget(self.keep_password, 1)
        row.addWidget(self.keep_show)
        row.addWidget(self.keep_copy)
        v.addLayout(row)
        self.sheet_button = QPushButton("Save recovery sheet…")
        self.sheet_button.clicked.connect(self._choose_sheet)
        v.addWidget(self.sheet_button)
        self.kept = QCheckBox("I have &kept the password somewhere other than this computer")
        v.addWidget(self.kept)
        self.errors["kept"] = FieldError()
        v.addWidget(self.errors["kept"])
        v.addStretch(1)
        self._banner("keep", v)
        return page

    def _create_page(self) -> QWidget:
        page, v = _page("Ready", "")
        self.summary = QLabel()
        self.summary.setWordWrap(True)
        v.addWidget(self.summary)
        self.progress = QLabel()
        self.progress.setWordWrap(True)
        v.addWidget(self.progress)
        v.addStretch(1)
        self._banner("create", v)
        return page

    # -- small behaviours --------------------------------------------------------------------

    @property
    def page(self) -> str:
        return PAGES[self.stack.currentIndex()]

    def password(self) -> str:
        return self.own_password.text() if self.pw_own.isChecked() else self.generated.text()

    def _show_password(self, on: bool) -> None:
        mode = QLineEdit.EchoMode.Normal if on else QLineEdit.EchoMode.Password
        for e in (self.generated, self.keep_password):
            e.setEchoMode(mode)
        for box in (self.pw_show, self.keep_show):
            if box.isChecked() != on:
                box.setChecked(on)

    def copy_password(self) -> None:
        QGuiApplication.clipboard().setText(self.password())
        self.banners[self.page].show_message("The password is on the clipboard.", "ok")

    def _password_kind(self) -> None:
        own = self.pw_own.isChecked()
        for w in (self.own_password, self.own_password2):
            w.setEnabled(own)
        for other in (self.generated, self.pw_show, self.pw_copy, self.pw_new):
            other.setEnabled(not own)

    def _preset_changed(self) -> None:
        kind = self.preset.currentData()
        self.at.setVisible(kind == "daily")
        self.cron.setVisible(kind == "cron")

    def repo_fields(self) -> dict[str, str]:
        return {k: e.text() for k, e in self.fields.items()}

    def _preview_uri(self) -> None:
        uri, _, errors = build_repo_uri(str(self.kind.currentData()), self.repo_fields())
        shown, _ = split_uri_password(uri)
        self.uri_preview.setText("" if errors else f"restic location: {shown}")

    def _browse_repo(self) -> None:
        self._dialog = choose_folder(
            self, "Choose the folder for the backups", self.fields["path"].setText, QDir.homePath()
        )

    def _browse_folder(self) -> None:
        self._dialog = choose_folder(
            self, "Choose a folder to back up", self.add_folder, QDir.homePath()
        )

    def add_folder(self, path: str) -> None:
        if path and path not in self.folder_list():
            self.folders.addItem(path)
            self.errors["folders"].set_error("")

    def remove_selected_folder(self) -> None:
        for it in self.folders.selectedItems():
            self.folders.takeItem(self.folders.row(it))

    def folder_list(self) -> list[str]:
        return [self.folders.item(i).text() for i in range(self.folders.count())]

    def _choose_sheet(self) -> None:
        name = self.repo_name.text().strip() or "backup"
        start = str(Path(QDir.homePath()) / f"peerstash-recovery-{name}.txt")
        dlg = QFileDialog(self, "Save the recovery sheet", start)
        dlg.setAcceptMode(QFileDialog.AcceptMode.AcceptSave)
        dlg.setDefaultSuffix("txt")
        dlg.fileSelected.connect(lambda p: self.tasks.spawn(self.save_sheet(Path(p))))
        self._dialog = dlg
        dlg.open()

    def sheet_text(self) -> str:
        uri, env, _ = build_repo_uri(str(self.kind.currentData()), self.repo_fields())
        shown, _ = split_uri_password(uri)
        return recovery_sheet(
            name=self.repo_name.text().strip(),
            uri=shown,
            password=self.password(),
            env_keys=sorted(env),
            machine=self.backend.node_name or self.backend.instance_id,
        )

    def _sheet_key(self) -> tuple[str, str]:
        uri, _, _ = build_repo_uri(str(self.kind.currentData()), self.repo_fields())
        return uri, self.password()

    async def save_sheet(self, path: Path) -> None:
        """Write the recovery sheet, owner-only; the page says where and how it is protected."""
        try:
            await asyncio.to_thread(write_private, path, self.sheet_text())
        except OSError as exc:
            self.banners["keep"].show_message(
                f"Could not write {path}: {exc.strerror or exc}", "error"
            )
            return
        self.sheet_path = path
        self.sheet_for = self._sheet_key()
        self.banners["keep"].show_message(
            f"Recovery sheet saved to {path} (mode 0600: only you can read it). Print it or "
            "move it off this computer.",
            "ok",
        )

    # -- navigation --------------------------------------------------------------------------

    def _show_page(self, index: int) -> None:
        self.stack.setCurrentIndex(index)
        self.step.setText(f"Step {index + 1} of {len(PAGES)}")
        self.back_button.setEnabled(index > 0 and not self.tasks.busy)
        key = PAGES[index]
        if key == "keep":
            self.keep_password.setText(self.password())
            if self.sheet_for is not None and self.sheet_for != self._sheet_key():
                # The location or the password changed since the sheet was saved: it would
                # not open the repository. Say so, and ask again.
                self.sheet_for = None
                self.kept.setChecked(False)
                self.banners["keep"].show_message(
                    f"The recovery sheet saved to {self.sheet_path} is for the earlier "
                    "location or password: save it again.",
                    "warning",
                )
        if key == "create":
            self._fill_summary()
        self._update_next()

    def _update_next(self) -> None:
        if self.page != "create":
            self.next_button.setText("&Next")
        elif self.plan is not None:
            self.next_button.setText("Finish")
        elif self.repo_created:
            self.next_button.setText("Retry the plan")
        else:
            self.next_button.setText("Create and back up now")

    def go_to(self, key: str) -> None:
        self._show_page(PAGES.index(key))

    def back(self) -> None:
        if self.stack.currentIndex() > 0:
            self._show_page(self.stack.currentIndex() - 1)

    def next(self) -> None:
        """Check the current page; move on, or on the last page create everything."""
        if self.tasks.busy:
            return
        key = self.page
        if key == "create":
            if self.plan is not None:
                self.accept()
                return
            self.next_button.setEnabled(False)
            self.back_button.setEnabled(False)
            self.tasks.spawn(self._create(), name="assistant:create")
            return
        errors = self.check_page(key)
        for k, err in self.errors.items():
            if k in self._page_fields(key):
                err.set_error(errors.get(k, ""))
        if errors:
            self.banners[key].show_message("Please correct the fields marked in red.", "error")
            return
        self.banners[key].clear_message()
        self._show_page(self.stack.currentIndex() + 1)

    def _page_fields(self, key: str) -> set[str]:
        return {
            "repo": {"repo_name", "kind", *self.fields},
            "password": {"password"},
            "folders": {"folders"},
            "schedule": {"plan_name", "schedule"},
            "keep": {"kept"},
        }.get(key, set())

    def check_page(self, key: str) -> dict[str, str]:
        """The errors of one page (by field), from the same validators the node uses."""
        errors: dict[str, str] = {}
        if key == "repo" and not self.repo_created:
            name = self.repo_name.text().strip()
            try:
                check_name("repository", name)
            except EngineError as exc:
                errors["repo_name"] = "Give the repository a name." if not name else str(exc)
            if any(r.id == name for r in self.backend.repos):
                errors["repo_name"] = f"A repository named {name!r} already exists."
            _, _, uri_errors = build_repo_uri(str(self.kind.currentData()), self.repo_fields())
            errors.update(uri_errors)
        elif key == "password" and not self.repo_created and self.pw_own.isChecked():
            pw = self.own_password.text()
            if len(pw) < 8:
                errors["password"] = "Use at least 8 characters (or let Peerstash generate one)."
            elif pw != self.own_password2.text():
                errors["password"] = "The two passwords differ."
        elif key == "folders":
            paths = self.folder_list()
            missing = [p for p in paths if not os.path.isabs(p) or not os.path.exists(p)]
            if not paths:
                errors["folders"] = "Add at least one folder."
            elif missing:
                errors["folders"] = "Not found: " + ", ".join(missing)
        elif key == "schedule":
            name = self.plan_name.text().strip()
            try:
                check_name("plan", name)
            except EngineError as exc:
                errors["plan_name"] = "Give the plan a name." if not name else str(exc)
            if any(p.id == name for p in self.backend.plans):
                errors["plan_name"] = f"A plan named {name!r} already exists."
            if self.preset.currentData() == "cron":
                try:
                    validate_cron(self.cron.text().strip())
                except ValueError as exc:
                    errors["schedule"] = str(exc)[:1].upper() + str(exc)[1:]
        elif key == "keep" and not self.kept.isChecked():
            errors["kept"] = "Tick this once the password is safe elsewhere."
        return errors

    # -- what goes to the node ---------------------------------------------------------------

    def repo_body(self) -> schema.AddRepo:
        uri, env, _ = build_repo_uri(str(self.kind.currentData()), self.repo_fields())
        return schema.AddRepo(
            id=self.repo_name.text().strip(),
            uri=uri,
            password=schema.Password(source="secret", value=self.password()),
            env=env,
            options=[],
            init=True,
        )

    def plan_body(self) -> schema.AddPlan:
        body = schema.AddPlan(
            id=self.plan_name.text().strip(),
            repo=self.repo_created or self.repo_name.text().strip(),
            paths=self.folder_list(),
            excludes=[],
            retention=dict(DEFAULT_RETENTION) if self.keep_default.isChecked() else {},
            backup_now=True,
        )
        kind = self.preset.currentData()
        if kind == "daily":
            t = self.at.time()
            body.schedule = f"{t.minute()} {t.hour()} * * *"
        elif kind == "hourly":
            body.every = "1h"
        else:
            body.schedule = self.cron.text().strip()
        RetentionPolicy.from_dict(body.retention)  # a constant: fails loudly in tests only
        return body

    def _fill_summary(self) -> None:
        uri, _, _ = build_repo_uri(str(self.kind.currentData()), self.repo_fields())
        shown, _ = split_uri_password(uri)
        plan = self.plan_body()
        when = {
            "daily": f"every day at {self.at.time().toString('HH:mm')}",
            "hourly": "every hour",
            "cron": f"cron {self.cron.text().strip()}",
        }[str(self.preset.currentData())]
        keep = "thinned out (7 daily, 4 weekly, 12 monthly)" if plan.retention else "all kept"
        done = f" (created: {self.repo_created})" if self.repo_created else ""
        self.summary.setText(
            f"Repository {self.repo_name.text().strip()} at {shown}{done}\n"
            f"Plan {plan.id}: {', '.join(plan.paths)}\n"
            f"Backs up {when}; old snapshots {keep}.\n"
            "The first backup starts as soon as everything is created."
        )

    async def _create(self) -> None:
        try:
            if not self.repo_created:
                self.progress.setText("Creating the repository with restic…")
                try:
                    repo, _said = await self.backend.add_repo(self.repo_body())
                except ApiError as exc:
                    self.progress.setText("")
                    self._repo_refused(exc)
                    return
                self.repo_created = repo.id
                self._lock_repo_pages()
            self.progress.setText("Repository ready. Adding the plan…")
            try:
                plan, first = await self.backend.add_plan(self.plan_body())
            except ApiError as exc:
                self.progress.setText(
                    f"The repository {self.repo_created} was created and is kept (it works), "
                    f"but the plan was refused: {exc}"
                )
                self.banners["create"].show_message(
                    "Go back to correct the folders or schedule, or press Retry the plan.",
                    "error",
                )
                return
            self.plan = plan
            self.banners["create"].clear_message()
            first = first or {}
            if first.get("error") or not first.get("id"):
                self.progress.setText(
                    f"Everything is set up, but the first backup did not start: "
                    f"{first.get('error') or 'no answer'}. It runs at its first scheduled time."
                )
            else:
                # The first backup is the operation's record (or ``{"error": ...}`` above).
                try:
                    self.first_op = decode(first, OpRecord, "an operation")
                    op = await self.backend.call("GET", f"/v1/ops/{q(self.first_op.id)}")
                    self._op_changed(decode(op, OpRecord, "an operation"))
                except ApiError as exc:
                    self.progress.setText(
                        f"Everything is set up, but the first backup cannot be followed here: "
                        f"{exc}. See the Operations page."
                    )
            self.setupDone.emit(plan)
        finally:
            self.next_button.setEnabled(True)
            self.back_button.setEnabled(self.plan is None)
            self._update_next()

    def _repo_refused(self, exc: ApiError) -> None:
        # The node names the field its refusal is about: a wrong password goes back to the
        # password page, everything else (location, credentials, name) to the repository page.
        key = "password" if exc.field == "password" else "repo"
        self.go_to(key)
        self.banners[key].show_message(
            f"The node could not create the repository: {exc}. Nothing was kept; correct "
            "it and try again.",
            "error",
        )

    def _lock_repo_pages(self) -> None:
        for w in (
            self.repo_name,
            self.kind,
            self.browse_button,
            *self.fields.values(),
            self.pw_generate,
            self.pw_own,
            self.own_password,
            self.own_password2,
            self.pw_new,
        ):
            w.setEnabled(False)
        for key in ("repo", "password"):
            self.banners[key].show_message(
                f"The repository {self.repo_created} exists now; this cannot change here.",
                "info",
            )

    def _op_changed(self, op: OpRecord) -> None:
        first = self.first_op
        if first is None or (op.id, op.origin) != (first.id, first.origin):
            return
        self.first_op = op
        status = op.status
        if status not in FINISHED:
            self.progress.setText("Everything is set up. The first backup is running…")
        elif status in ("success", "warning"):
            snap = (op.snapshot_id or "")[:8]
            extra = f" ({op.error})" if status == "warning" and op.error else ""
            self.progress.setText(f"Done: the first backup finished, snapshot {snap}.{extra}")
        else:
            self.progress.setText(
                f"Everything is set up, but the first backup ended {status}: "
                f"{op.error or 'see Operations'}."
            )

    def _unexpected(self, exc: BaseException) -> None:
        self.banners[self.page].show_message(f"unexpected error: {exc}", "error")

    def reject(self) -> None:
        """Cancel; but a created repository without its plan is never left silently."""
        if self.repo_created and self.plan is None and not self._cancel_warned:
            self._cancel_warned = True
            self.go_to("create")
            self.banners["create"].show_message(
                f"The repository {self.repo_created} was created and stays in Plans & "
                "repositories, without a plan. Press Cancel again to leave it so, or Retry "
                "the plan.",
                "warning",
            )
            return
        super().reject()

    async def close_assistant(self) -> None:
        await self.tasks.close()
