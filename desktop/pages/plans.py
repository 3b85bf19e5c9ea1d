"""Plans and repositories: list, add and edit (dialogs), remove, back up now, maintenance now."""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import Signal
from PySide6.QtWidgets import QGroupBox, QMessageBox, QPushButton, QVBoxLayout, QWidget

from peerstash.core.records import ForgetPreviewRecord
from peerstash.desktop import fmt
from peerstash.desktop.api import q
from peerstash.desktop.backend import Backend, decode
from peerstash.desktop.dialogs.confirm_list import ListConfirmDialog
from peerstash.desktop.dialogs.forms import (
    AddPlanDialog,
    AddRepoDialog,
    EditPlanDialog,
    EditRepoDialog,
)
from peerstash.desktop.widgets import (
    Page,
    button_row,
    confirm,
    item,
    make_table,
    selected_data,
)
from peerstash.peer.api import schema

PLAN_HEADERS = ("Plan", "Repository", "Schedule", "Folders", "Keep", "State")
REPO_HEADERS = ("Repository", "Location", "Password", "ID", "Kind")


def retention_text(ret: dict[str, Any]) -> str:
    parts = [f"{k.removeprefix('keep_')} {v}" for k, v in ret.items() if v]
    return ", ".join(parts) if parts else "everything"


class PlansPage(Page):
    title = "Plans & repositories"
    #: "Set up a backup…": the window opens the first-run assistant.
    setupRequested = Signal()

    def __init__(self, backend: Backend, parent: QWidget | None = None) -> None:
        super().__init__(backend, parent)
        plans_box = QGroupBox("Backup plans")
        pl = QVBoxLayout(plans_box)
        self.plans = make_table(PLAN_HEADERS, stretch=3)
        self.plans.itemSelectionChanged.connect(self._update_buttons)
        # Enter (or a double click) on a plan opens it in the editor.
        self.plans.activated.connect(lambda _i: self.open_edit_plan())
        pl.addWidget(self.plans)
        self.add_plan_button = QPushButton("Add plan…")
        self.setup_button = QPushButton("Set up a backup…")
        self.setup_button.setToolTip("A repository, its password kept safe, a plan: step by step")
        self.setup_button.clicked.connect(self.setupRequested)
        self.edit_plan_button = QPushButton("Edit…")
        self.edit_plan_button.clicked.connect(self.open_edit_plan)
        self.backup_button = QPushButton("Back up now")
        self.remove_plan_button = QPushButton("Remove plan")
        self.add_plan_button.clicked.connect(self.open_add_plan)
        self.backup_button.clicked.connect(self._backup)
        self.remove_plan_button.clicked.connect(self._remove_plan)
        pl.addLayout(
            button_row(
                self.setup_button,
                self.add_plan_button,
                self.edit_plan_button,
                self.backup_button,
                self.remove_plan_button,
            )
        )
        self.outer.addWidget(plans_box, 1)

        repos_box = QGroupBox("Repositories")
        rl = QVBoxLayout(repos_box)
        self.repos = make_table(REPO_HEADERS, stretch=1)
        self.repos.itemSelectionChanged.connect(self._update_buttons)
        self.repos.activated.connect(lambda _i: self._open_repo())
        rl.addWidget(self.repos)
        self.add_repo_button = QPushButton("Add repository…")
        self.add_repo_button.clicked.connect(self.open_add_repo)
        self.edit_repo_button = QPushButton("Edit…")
        self.edit_repo_button.clicked.connect(self.open_edit_repo)
        self.maint_buttons: dict[str, QPushButton] = {}
        for what, text in (
            ("forget", "Apply retention now"),
            ("prune", "Prune now"),
            ("check", "Check now"),
            ("unlock", "Unlock"),
        ):
            b = QPushButton(text)
            b.clicked.connect(lambda _=False, w=what: self._maintenance(w))
            self.maint_buttons[what] = b
        self.remove_repo_button = QPushButton("Remove")
        self.remove_repo_button.clicked.connect(self._remove_repo)
        # Two rows: seven buttons in one would make the page wider than a small screen.
        rl.addLayout(
            button_row(self.add_repo_button, self.edit_repo_button, self.remove_repo_button)
        )
        rl.addLayout(button_row(*self.maint_buttons.values()))
        self.outer.addWidget(repos_box, 1)

        self.dialog: AddPlanDialog | AddRepoDialog | None = None
        self.question: QMessageBox | None = None
        self.confirm_dialog: ListConfirmDialog | None = None
        backend.configChanged.connect(self._show)
        self._show()

    def activate(self) -> None:
        self.run(self.backend.refresh_config())

    def _show(self) -> None:
        keep_plan, keep_repo = selected_data(self.plans), selected_data(self.repos)
        plans, repos = self.backend.plans, self.backend.repos
        self.plans.setRowCount(len(plans))
        for r, p in enumerate(plans):
            self.plans.setItem(r, 0, item(p.id, p.id))
            self.plans.setItem(r, 1, item(p.repo))
            self.plans.setItem(r, 2, item(fmt.schedule_text(p)))
            paths = item(", ".join(p.paths))
            paths.setToolTip("\n".join(p.paths))
            self.plans.setItem(r, 3, paths)
            self.plans.setItem(r, 4, item(retention_text(p.retention)))
            reason = p.disabled_reason
            state = "enabled" if p.enabled else (f"disabled: {reason}" if reason else "disabled")
            self.plans.setItem(r, 5, item(state))
            if p.id == keep_plan:
                self.plans.selectRow(r)
        self.repos.setRowCount(len(repos))
        for r, repo in enumerate(repos):
            self.repos.setItem(r, 0, item(repo.id, repo.id))
            self.repos.setItem(r, 1, item(repo.uri))
            src = repo.password_source
            ref = repo.password_ref
            self.repos.setItem(r, 2, item(f"{src} ({ref})" if ref else src))
            self.repos.setItem(r, 3, item((repo.guid or "")[:8]))
            kind = f"shared by {repo.origin} · read-only" if repo.origin else "own"
            self.repos.setItem(r, 4, item(kind))
            if repo.id == keep_repo:
                self.repos.selectRow(r)
        self._update_buttons()

    def _open_repo(self) -> None:
        if self.edit_repo_button.isEnabled():  # a shared repository cannot be edited here
            self.open_edit_repo()

    def _update_buttons(self) -> None:
        plan = selected_data(self.plans) is not None
        repo_id = selected_data(self.repos)
        repo = next((r for r in self.backend.repos if r.id == repo_id), None)
        own = repo is not None and not repo.origin
        self.backup_button.setEnabled(plan)
        self.edit_plan_button.setEnabled(plan)
        self.remove_plan_button.setEnabled(plan)
        self.edit_repo_button.setEnabled(own)
        if repo is None:
            self.edit_repo_button.setToolTip("Select a repository to change its settings.")
        elif not own:
            self.edit_repo_button.setToolTip(
                f"Shared by {repo.origin}: read-only here. Change it on {repo.origin}."
            )
        else:
            self.edit_repo_button.setToolTip("Change the location, password or options.")
        for what, b in self.maint_buttons.items():
            b.setEnabled(repo is not None and (own or what in ("check", "unlock")))
        self.remove_repo_button.setEnabled(repo is not None)

    # -- actions -----------------------------------------------------------------------------

    def select_plan(self, plan_id: str) -> None:
        for r in range(self.plans.rowCount()):
            item = self.plans.item(r, 0)
            if item is not None and item.text() == plan_id:
                self.plans.selectRow(r)

    def select_repo(self, repo_id: str) -> None:
        for r in range(self.repos.rowCount()):
            item = self.repos.item(r, 0)
            if item is not None and item.text() == repo_id:
                self.repos.selectRow(r)

    def open_add_plan(self) -> AddPlanDialog:
        dlg = AddPlanDialog(self.backend, self)
        dlg.created.connect(lambda plan: self.banner.show_message(f"Plan {plan.id} added.", "ok"))
        self.dialog = dlg
        dlg.open()
        return dlg

    def open_add_repo(self) -> AddRepoDialog:
        dlg = AddRepoDialog(self.backend, self)
        dlg.created.connect(
            lambda res: self.banner.show_message(
                f"Repository {res[0].id}: {res[1] or 'added'}.", "ok"
            )
        )
        self.dialog = dlg
        dlg.open()
        return dlg

    def open_edit_plan(self) -> EditPlanDialog | None:
        plan_id = selected_data(self.plans)
        plan = next((p for p in self.backend.plans if p.id == plan_id), None)
        if plan is None:
            return None
        dlg = EditPlanDialog(self.backend, plan, self)
        dlg.created.connect(lambda p: self.banner.show_message(f"Plan {p.id} saved.", "ok"))
        self.dialog = dlg
        dlg.open()
        return dlg

    def open_edit_repo(self) -> EditRepoDialog | None:
        repo_id = selected_data(self.repos)
        repo = next((r for r in self.backend.repos if r.id == repo_id), None)
        if repo is None or repo.origin:
            return None
        dlg = EditRepoDialog(self.backend, repo, self)
        dlg.created.connect(
            lambda res: self.banner.show_message(f"Repository {res[0].id}: {res[1]}.", "ok")
        )
        self.dialog = dlg
        dlg.open()
        return dlg

    def _backup(self) -> None:
        plan_id = selected_data(self.plans)
        if plan_id:
            self.run(self._do_backup(str(plan_id)), name="plans:backup")

    async def _do_backup(self, plan_id: str) -> None:
        op, already = await self.backend.backup(plan_id)
        if already:  # the node queued nothing: one is on its way already
            self.banner.show_message(f"{already}; follow it on the Operations page.", "info")
            return
        self.banner.show_message(
            f"Backup of {plan_id} queued as operation {op.id[-8:]}; follow it on the "
            "Operations page.",
            "ok",
        )

    def _maintenance(self, what: str) -> None:
        repo_id = selected_data(self.repos)
        if not repo_id:
            return
        if what == "forget":
            # Show what would go first (the node's dry run), and ask.
            self.run(self._preview_forget(str(repo_id)), name="plans:forget-preview")
        elif what == "prune":
            self.question = confirm(
                self,
                "Prune repository",
                f"Prune {repo_id} now? It deletes the data that no snapshot uses any more, so "
                "the space is freed. It can take a long time (backups to this repository wait "
                "until it ends) and it cannot be undone.",
                "Prune now",
                lambda: self.run(self._do_maintenance(str(repo_id), "prune")),
            )
        else:
            self.run(self._do_maintenance(str(repo_id), what), name=f"plans:{what}")

    async def _preview_forget(self, repo_id: str) -> None:
        self.banner.show_message(f"Working out what retention would remove from {repo_id}…")
        res = await self.backend.call(
            "POST", f"/v1/repos/{q(repo_id)}/forget", schema.Forget(dry_run=True)
        )
        preview = decode(res, ForgetPreviewRecord, "a retention preview")
        remove, keep = preview.remove, preview.keep
        if not remove:
            self.banner.show_message(
                f"Retention would remove nothing from {repo_id} now "
                f"({len(keep)} snapshot{'s' if len(keep) != 1 else ''} kept).",
                "ok",
            )
            return
        self.banner.clear_message()
        rows = [
            [
                fmt.date_time(s.time),
                s.short_id or s.id[:8],
                s.plan,
                s.hostname,
                ", ".join(s.paths),
            ]
            for s in sorted(remove, key=lambda s: s.time or "")
        ]
        n = len(remove)
        self.confirm_dialog = ListConfirmDialog(
            self,
            "Apply retention now",
            f"Applying the retention policies of the plans on {repo_id} removes "
            f"{n} snapshot{'s' if n != 1 else ''} and keeps {len(keep)}. Only this machine's "
            "snapshots of each plan are considered.",
            ("Date", "ID", "Plan", "Host", "Folders"),
            rows,
            f"Remove {n} snapshot{'s' if n != 1 else ''}",
            lambda: self.run(
                self._do_maintenance(
                    repo_id, "forget", schema.Forget(expect=[s.id for s in remove])
                )
            ),
            footer="A removed snapshot cannot be brought back. Its data stays in the "
            "repository until the next prune.",
        )
        self.confirm_dialog.open()

    async def _do_maintenance(
        self, repo_id: str, what: str, body: schema.Maintenance | schema.Forget | None = None
    ) -> None:
        op = await self.backend.maintenance(repo_id, what, body)
        self.banner.show_message(f"{what} of {repo_id} queued as operation {op.id[-8:]}.", "ok")

    def _remove_plan(self) -> None:
        plan_id = selected_data(self.plans)
        if plan_id:
            self.question = confirm(
                self,
                "Remove plan",
                f"Remove the plan {plan_id}? Its snapshots stay in the repository.",
                "Remove plan",
                lambda: self.run(self._do_remove_plan(str(plan_id))),
            )

    async def _do_remove_plan(self, plan_id: str) -> None:
        await self.backend.delete_plan(plan_id)
        self.banner.show_message(
            f"Plan {plan_id} removed; its snapshots stay in the repository.", "ok"
        )

    def _remove_repo(self) -> None:
        repo_id = selected_data(self.repos)
        if repo_id:
            self.question = confirm(
                self,
                "Remove repository",
                f"Stop using the repository {repo_id}? Peerstash forgets it and its password; "
                "the data in it is not touched.",
                "Remove repository",
                lambda: self.run(self._do_remove_repo(str(repo_id))),
            )

    async def _do_remove_repo(self, repo_id: str) -> None:
        await self.backend.delete_repo(repo_id)
        self.banner.show_message(
            f"Repository {repo_id} removed from Peerstash; its data is untouched.", "ok"
        )
