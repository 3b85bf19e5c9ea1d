"""Snapshots: pick a repository, pick a snapshot, browse its tree, restore a path with progress.

The tree is loaded one directory at a time from the node's NDJSON ``ls`` stream (restic lists a
directory and its direct children), so a snapshot of millions of files opens as fast as a small
one, and rows are added in batches while they arrive.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from pathlib import Path
from typing import Any

import shiboken6
from PySide6.QtCore import QModelIndex, Qt, QUrl
from PySide6.QtGui import QDesktopServices, QStandardItem, QStandardItemModel
from PySide6.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QFileDialog,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QRadioButton,
    QSplitter,
    QTreeView,
    QVBoxLayout,
    QWidget,
)

from peerstash.core.ops import FINISHED
from peerstash.core.records import LsNodeRecord, OpRecord, RestorePreviewRecord, SnapshotRecord
from peerstash.core.restore_target import default_restore_folder, restored_path
from peerstash.core.wording import human_bytes, snapshot_size, split_tags
from peerstash.desktop import fmt
from peerstash.desktop.api import ApiError, q, query
from peerstash.desktop.backend import Backend, decode
from peerstash.desktop.dialogs.confirm_list import ListConfirmDialog
from peerstash.desktop.widgets import (
    Page,
    choose_folder,
    item,
    make_table,
    selected_data,
    state_color,
)
from peerstash.peer.api import schema

log = logging.getLogger(__name__)

PathRole = Qt.ItemDataRole.UserRole + 1
LoadedRole = Qt.ItemDataRole.UserRole + 2
TypeRole = Qt.ItemDataRole.UserRole + 3
BATCH = 200
SNAPSHOT_HEADERS = ("Date", "ID", "Plan", "Host", "Size", "Files", "Folders", "Other tags")
#: How many would-be-overwritten files the restore question lists (the count is complete).
SHOWN_OVERWRITES = 200


def restored_folder() -> Path:
    """Where restores go by default: a folder of their own in the home folder."""
    return Path.home() / "Restored"


def is_child(path: str, parent: str) -> bool:
    """True when ``path`` is directly inside ``parent`` (both absolute snapshot paths)."""
    parent = parent.rstrip("/") or "/"
    path = path.rstrip("/") or "/"
    return path != parent and os.path.dirname(path) == parent


class SnapshotsPage(Page):
    title = "Snapshots"

    def __init__(self, backend: Backend, parent: QWidget | None = None) -> None:
        super().__init__(backend, parent)
        top = QHBoxLayout()
        top.addWidget(QLabel("Repository"))
        self.repo = QComboBox()
        self.repo.setMinimumContentsLength(14)
        self.repo.currentIndexChanged.connect(self._repo_changed)
        top.addWidget(self.repo)
        self.refresh_button = QPushButton("Refresh")
        self.refresh_button.clicked.connect(self._repo_changed)
        top.addWidget(self.refresh_button)
        top.addStretch(1)
        self.outer.addLayout(top)

        self.snapshots = make_table(SNAPSHOT_HEADERS, stretch=6)
        self.snapshots.itemSelectionChanged.connect(self._snapshot_changed)
        # Enter (or a double click) on a snapshot goes into its files.
        self.snapshots.activated.connect(lambda _i: self.open_browser())
        self.tree_model = QStandardItemModel(0, 3, self)
        self.tree_model.setHorizontalHeaderLabels(["Name", "Size", "Modified"])
        self.tree = QTreeView()
        self.tree.setModel(self.tree_model)
        self.tree.setUniformRowHeights(True)
        self.tree.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.tree.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.tree.header().setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        self.tree.header().setStretchLastSection(False)
        self.tree.expanded.connect(self._expanded)
        self.tree.selectionModel().selectionChanged.connect(self._update_restore)
        split = QSplitter(Qt.Orientation.Vertical)
        split.addWidget(self.snapshots)
        split.addWidget(self.tree)
        split.setStretchFactor(0, 1)
        split.setStretchFactor(1, 2)
        self.outer.addWidget(split, 1)

        rl = QHBoxLayout()
        rl.addWidget(QLabel("Restore into"))
        self.to_new = QRadioButton("a new folder")
        self.to_new.setChecked(True)
        rl.addWidget(self.to_new)
        self.target = QLineEdit()
        self.target.setPlaceholderText(
            "a folder; the snapshot's full paths are recreated inside it"
        )
        self.target.textEdited.connect(self._target_edited)
        rl.addWidget(self.target, 1)
        choose = QPushButton("Choose…")
        choose.clicked.connect(self._choose_target)
        rl.addWidget(choose)
        self.to_original = QRadioButton("where it came from")
        self.to_original.setToolTip(
            "Puts the files back at their original place, replacing what is there now "
            "(you are shown what would be overwritten first)."
        )
        rl.addWidget(self.to_original)
        self.restore_button = QPushButton("Restore selected")
        self.restore_button.clicked.connect(self.restore_selected)
        rl.addWidget(self.restore_button)
        self.outer.addLayout(rl)
        pl = QVBoxLayout()
        self.progress = QProgressBar()
        self.progress.setRange(0, 1000)
        self.progress.hide()
        sl = QHBoxLayout()
        self.restore_status = QLabel("")
        self.restore_status.setWordWrap(True)
        self.restore_status.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        sl.addWidget(self.restore_status, 1)
        self.open_button = QPushButton("Open folder")
        self.open_button.clicked.connect(self.open_restored)
        self.open_button.hide()
        sl.addWidget(self.open_button)
        pl.addWidget(self.progress)
        pl.addLayout(sl)
        self.outer.addLayout(pl)
        #: Where the last finished restore put the files (the "Open folder" button opens it).
        self.restored_to: str | None = None
        #: The restore waiting for the person's answer (what would be overwritten).
        self.confirm_dialog: ListConfirmDialog | None = None
        self._target_is_default = True
        self._restore_what: tuple[str, list[str]] = ("/", [])

        self.restore_op: OpRecord | None = None
        self._loading: set[str] = set()
        self._folder_dialog: QFileDialog | None = None
        self._snap_generation = 0
        backend.configChanged.connect(self._fill_repos)
        backend.snapshotsChanged.connect(self._snapshots_changed)
        backend.opChanged.connect(self._op_changed)
        self._fill_repos()
        self._update_restore()

    def activate(self) -> None:
        if self.repo.currentData() and self.snapshots.rowCount() == 0:
            self._repo_changed()

    # -- repositories and snapshots -----------------------------------------------------------

    def _fill_repos(self) -> None:
        current = self.repo.currentData()
        ids = [r.id for r in self.backend.repos]
        if [self.repo.itemData(i) for i in range(self.repo.count())] == ids:
            return
        self.repo.blockSignals(True)
        self.repo.clear()
        for rid in ids:
            self.repo.addItem(rid, rid)
        i = self.repo.findData(current)
        self.repo.setCurrentIndex(max(i, 0))
        self.repo.blockSignals(False)
        if self.repo.currentData() != current and self.isVisible():
            self._repo_changed()

    def select_repo(self, repo_id: str) -> None:
        i = self.repo.findData(repo_id)
        if i >= 0:
            if i == self.repo.currentIndex():
                self._repo_changed()
            else:
                self.repo.setCurrentIndex(i)

    def _snapshots_changed(self, repo_id: str) -> None:
        """A forget or prune (maybe by a shared repository's owner) changed what we show."""
        if repo_id == self.repo.currentData() and self.isVisible():
            self._repo_changed()

    def _repo_changed(self) -> None:
        repo = self.repo.currentData()
        self.snapshots.setRowCount(0)
        self._clear_tree()
        if repo:
            self.run(self.load_snapshots(str(repo)), name="snapshots:list")

    async def load_snapshots(self, repo: str) -> None:
        self._snap_generation += 1
        gen = self._snap_generation
        self.banner.show_message(f"Reading the snapshots of {repo}…", "info")
        answer = await self.backend.call("GET", f"/v1/repos/{q(repo)}/snapshots")
        if gen != self._snap_generation:
            return
        snaps = decode(answer, list[SnapshotRecord], "a list of snapshots")
        self.banner.clear_message()
        snaps.sort(key=lambda s: s.time or "", reverse=True)
        self.snapshots.setRowCount(len(snaps))
        right = Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter
        for r, s in enumerate(snaps):
            tags = split_tags(s.tags)
            size, files = snapshot_size(s.summary)
            self.snapshots.setItem(r, 0, item(fmt.date_time(s.time), s))
            self.snapshots.setItem(r, 1, item(s.short_id or s.id[:8]))
            self.snapshots.setItem(r, 2, item(tags.plan))
            self.snapshots.setItem(r, 3, item(tags.host or s.hostname))
            # restic 0.17+ stores these in the snapshot; older versions do not: left blank.
            size_item = item("" if size is None else human_bytes(size))
            size_item.setTextAlignment(right)
            self.snapshots.setItem(r, 4, size_item)
            files_item = item("" if files is None else f"{files:,}")
            files_item.setTextAlignment(right)
            self.snapshots.setItem(r, 5, files_item)
            folders = item(", ".join(s.paths))
            folders.setToolTip("\n".join(s.paths))
            self.snapshots.setItem(r, 6, folders)
            self.snapshots.setItem(r, 7, item(", ".join(tags.others)))
        if not snaps:
            self.banner.show_message(f"{repo} has no snapshots yet.", "info")

    def snapshot(self) -> SnapshotRecord | None:
        snap = selected_data(self.snapshots)
        return snap if isinstance(snap, SnapshotRecord) else None

    def _snapshot_changed(self) -> None:
        self._clear_tree()
        snap = self.snapshot()
        if snap is None:
            return
        # Open at the folders the snapshot backed up, not at "/" (a click per parent saved).
        for path in snap.paths or ["/"]:
            root = self._dir_item(path, path)
            self.tree_model.appendRow([root, QStandardItem(""), QStandardItem("")])
            self.tree.expand(root.index())
        self.run(self._suggest_target(snap), name="snapshots:target")

    async def _suggest_target(self, snap: SnapshotRecord) -> None:
        """A fresh folder named after the plan and the snapshot's date (never one that holds
        something already), unless the person typed a folder of their own."""
        if not self._target_is_default:
            return
        plan = split_tags(snap.tags).plan or snap.short_id or "snapshot"
        folder = await asyncio.to_thread(
            default_restore_folder, restored_folder(), plan, fmt.parse_time(snap.time)
        )
        shown = self.snapshot()
        if self._target_is_default and shown is not None and shown.id == snap.id:
            self.target.setText(str(folder))

    def _target_edited(self, _text: str) -> None:
        self._target_is_default = False
        self.to_new.setChecked(True)

    def open_browser(self) -> None:
        """Move into the selected snapshot's files: the tree gets the focus, its top selected."""
        if self.snapshot() is None:
            return
        if self.tree_model.rowCount() == 0:
            self._snapshot_changed()
        top = self.tree_model.index(0, 0)
        if top.isValid():
            self.tree.setCurrentIndex(top)
        self.tree.setFocus(Qt.FocusReason.OtherFocusReason)

    # -- the tree ------------------------------------------------------------------------------

    def _clear_tree(self) -> None:
        self.tree_model.removeRows(0, self.tree_model.rowCount())
        self._loading.clear()
        self._update_restore()

    def _dir_item(self, name: str, path: str) -> QStandardItem:
        it = QStandardItem(name)
        it.setData(path, PathRole)
        it.setData(False, LoadedRole)
        it.setData("dir", TypeRole)
        it.setIcon(self.style().standardIcon(self.style().StandardPixmap.SP_DirIcon))
        it.appendRow(QStandardItem("Loading…"))  # makes it expandable until it is read
        return it

    def _expanded(self, index: QModelIndex) -> None:
        it = self.tree_model.itemFromIndex(index.siblingAtColumn(0))
        if it is None or it.data(LoadedRole) or it.data(PathRole) in self._loading:
            return
        snap = self.snapshot()
        repo = self.repo.currentData()
        if snap and repo:
            path = str(it.data(PathRole))
            self._loading.add(path)
            self.run(self.load_dir(str(repo), snap.id, it), name="snapshots:ls")

    async def load_dir(self, repo: str, snap: str, parent: QStandardItem) -> None:
        # Another snapshot chosen meanwhile clears the tree and deletes ``parent``: the
        # listing then stops quietly (it belonged to the snapshot no longer shown).
        if not shiboken6.isValid(parent):
            return
        path = str(parent.data(PathRole))
        batch: list[list[QStandardItem]] = []
        first = True
        count = 0

        def flush() -> bool:
            nonlocal first
            if not shiboken6.isValid(parent):
                return False
            if first:
                parent.removeRows(0, parent.rowCount())
                first = False
            for row in batch:
                parent.appendRow(row)
            batch.clear()
            return True

        url = f"/v1/repos/{q(repo)}/snapshots/{q(snap)}/ls" + query({"path": path})
        try:
            async with contextlib.aclosing(self.backend.client.stream(url)) as stream:
                async for line in stream:
                    try:
                        node = decode(line, LsNodeRecord, "an entry of a listing")
                    except ApiError as exc:
                        log.warning("skipped a line of the listing of %s: %s", path, exc)
                        continue
                    if not is_child(node.path, path):
                        continue  # the directory itself (restic lists it first)
                    batch.append(self._row(node))
                    count += 1
                    if len(batch) >= BATCH and not flush():
                        return
        finally:
            self._loading.discard(path)
        if not flush():
            return
        parent.setData(True, LoadedRole)
        if count == 0:
            parent.appendRow(QStandardItem("(empty)"))

    def _row(self, node: LsNodeRecord) -> list[QStandardItem]:
        name = node.name or os.path.basename(node.path)
        path = node.path
        if node.type == "dir":
            first = self._dir_item(name, path)
        else:
            first = QStandardItem(name)
            first.setData(path, PathRole)
            first.setData(True, LoadedRole)
            first.setData(node.type, TypeRole)
            first.setIcon(self.style().standardIcon(self.style().StandardPixmap.SP_FileIcon))
        size = QStandardItem("" if node.type == "dir" else fmt.human_bytes(node.size))
        size.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        return [first, size, QStandardItem(fmt.local_time(node.mtime))]

    def find_item(self, path: str) -> QStandardItem | None:
        """The tree item of ``path`` if it is loaded (for tests and "reveal")."""
        matches = self.tree_model.match(
            self.tree_model.index(0, 0),
            PathRole,
            path,
            1,
            Qt.MatchFlag.MatchExactly | Qt.MatchFlag.MatchRecursive,
        )
        return self.tree_model.itemFromIndex(matches[0]) if matches else None

    def selected_path(self) -> str | None:
        idx = self.tree.selectionModel().selectedRows(0)
        if not idx:
            return None
        path = idx[0].data(PathRole)
        return str(path) if path else None

    # -- restore -----------------------------------------------------------------------------

    def _update_restore(self, *_: Any) -> None:
        busy = self.restore_op is not None and self.restore_op.status not in FINISHED
        self.restore_button.setEnabled(self.selected_path() is not None and not busy)

    def _choose_target(self) -> None:
        self._folder_dialog = choose_folder(self, "Restore into which folder?", self._target_chosen)

    def _target_chosen(self, path: str) -> None:
        self.target.setText(path)
        self._target_is_default = False
        self.to_new.setChecked(True)

    def restore_selected(self) -> None:
        path, snap, repo = self.selected_path(), self.snapshot(), self.repo.currentData()
        original = self.to_original.isChecked()
        target = "/" if original else self.target.text().strip()
        if not (path and snap and repo):
            self.restore_status.setText("Select a file or folder of a snapshot first.")
            return
        if not target or not os.path.isabs(target):
            self.restore_status.setText("Choose the folder to restore into (an absolute path).")
            return
        include = [] if path == "/" else [path]
        self.restore_button.setEnabled(False)
        self.open_button.hide()
        self._restore_what = (path, include)
        self.run(
            self._check_and_restore(str(repo), snap.id, target, include, original),
            name="restore:preview",
        )

    async def _check_and_restore(
        self, repo: str, snap: str, target: str, include: list[str], original: bool
    ) -> None:
        """Ask the node what the restore would overwrite; ask the person when it would
        overwrite anything, and always before putting files back where they came from."""
        try:
            answer = await self.backend.call(
                "POST",
                f"/v1/repos/{q(repo)}/restore/preview",
                schema.RestorePreview(snapshot=snap, target=target, include=include),
            )
        finally:
            self._update_restore()
        # An answer that is not the preview restores nothing (it would not say what it
        # overwrites): one line in the banner instead.
        preview = decode(answer, RestorePreviewRecord, "what the restore would overwrite")
        count, files = preview.overwrite_count, preview.files
        if not original and count == 0:
            await self._do_restore(repo, snap, target, include)
            return
        what = include[0] if include else "the whole snapshot"
        where = "to where it came from" if original else f"into {target}"
        if count:
            text = (
                f"Restoring {what} {where} overwrites {count} of its {files} file"
                f"{'s' if files != 1 else ''} with the snapshot's version:"
            )
            yes = f"Overwrite {count} file{'s' if count != 1 else ''}"
        else:
            text = (
                f"Restoring {what} {where} writes {files} file{'s' if files != 1 else ''}; "
                "none of them exists there now, so nothing is overwritten."
            )
            yes = "Restore"
        shown = [[p] for p in preview.overwrite[:SHOWN_OVERWRITES]]
        footer = (
            f"… and {count - len(shown)} more." if count > len(shown) else ""
        ) or "Files that are there and not in the snapshot are left alone."
        self.confirm_dialog = ListConfirmDialog(
            self,
            "Restore over existing files" if count else "Restore",
            text,
            ("Would be overwritten",),
            shown,
            yes,
            lambda: self.run(self._do_restore(repo, snap, target, include), name="restore"),
            footer=footer,
        )
        self.confirm_dialog.rejected.connect(
            lambda: self.restore_status.setText("Restore cancelled: nothing was changed.")
        )
        self.confirm_dialog.open()

    async def _do_restore(self, repo: str, snap: str, target: str, include: list[str]) -> None:
        try:
            op = await self.backend.restore(repo, snap, target, include)
        finally:
            self._update_restore()
        self.restore_op = op
        self.progress.setValue(0)
        self.progress.setRange(0, 0)
        self.progress.show()
        what = include[0] if include else "the whole snapshot"
        self.restore_status.setText(f"Restoring {what} into {target}…")
        self._show_restore(op)

    def _op_changed(self, op: OpRecord) -> None:
        cur = self.restore_op
        if cur is not None and (op.id, op.origin) == (cur.id, cur.origin):
            self.restore_op = op
            self._show_restore(op)

    def _show_restore(self, op: OpRecord) -> None:
        status = op.status
        frac = fmt.op_progress(op)
        if frac is not None:
            self.progress.setRange(0, 1000)
            self.progress.setValue(int(frac * 1000))
            self.progress.setFormat(fmt.op_detail(op))
        if status in FINISHED:
            self.progress.setRange(0, 1000)
            self.progress.setValue(1000 if status == "success" else self.progress.value())
            self.progress.setFormat("done" if status == "success" else status)
            if status == "success":
                where = self._restored_folder(op)
                self.restored_to = where
                self.open_button.setVisible(bool(where))
                msg = f"Restore finished: the files are in {where}."
            else:
                msg = f"Restore {fmt.STATUS_WORDS.get(status, status)}: {op.error or ''}"
            self.restore_status.setText(msg)
            self.restore_status.setStyleSheet(
                f"color:{state_color('ok' if status == 'success' else 'error', self)};"
            )
            self.banner.show_message(msg, "ok" if status == "success" else "error")
        self._update_restore()

    def _restored_folder(self, op: OpRecord) -> str:
        """The folder holding what was restored: the selected folder at its new place (or the
        folder of the selected file), which is what "Open folder" shows."""
        target = str(op.summary.get("target") or self.target.text() or "/")
        path, include = self._restore_what
        if not include:
            return target
        node = self.find_item(path)
        where = restored_path(target, path)
        if node is not None and node.data(TypeRole) != "dir":
            where = os.path.dirname(where)
        return where

    def open_restored(self) -> None:
        """Show the restored files in the file manager."""
        if self.restored_to:
            QDesktopServices.openUrl(QUrl.fromLocalFile(self.restored_to))
