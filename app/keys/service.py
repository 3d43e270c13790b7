"""Key use cases of one project: make a key (its secret shown once), list the keys, revoke one."""

from __future__ import annotations

from app.keys.schemas import KeyList, KeyOut, KeyRequest, NewKey
from app.records import NotFoundError
from app.storage.keys import ApiKeyRepository


class KeyService:
    def __init__(self, repository: ApiKeyRepository) -> None:
        self.repository = repository

    def create(self, project: str, request: KeyRequest) -> NewKey:
        record, token = self.repository.create(project, request.role, request.name)
        return NewKey(**KeyOut.model_validate(record).model_dump(), key=token)

    def list(self, project: str) -> KeyList:
        return KeyList(items=[KeyOut.model_validate(r) for r in self.repository.list(project)])

    def revoke(self, project: str, key_id: str) -> None:
        if not self.repository.revoke(key_id, project):
            raise NotFoundError.of("live key", key_id)
