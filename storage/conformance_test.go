package storage_test

import (
	"testing"

	"github.com/caddyserver/certmagic"

	"github.com/acmetls/acmetls/storage"
	"github.com/acmetls/acmetls/storage/storagetest"
)

func TestMemoryConformance(t *testing.T) {
	storagetest.Run(t, func(t *testing.T) (a, b storage.Storage) {
		s := &storage.Memory{}
		return s, s
	})
}

// CertMagic's file storage, the default backend, meets the same contract:
// two values on one directory are two processes sharing it.
func TestFileStorageConformance(t *testing.T) {
	storagetest.Run(t, func(t *testing.T) (a, b storage.Storage) {
		dir := t.TempDir()
		return &certmagic.FileStorage{Path: dir}, &certmagic.FileStorage{Path: dir}
	})
}
