package acmetls

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"errors"
	"fmt"
	"io/fs"
	"strings"
	"time"

	"github.com/mholt/acmez/v3/acme"
	"go.uber.org/zap"

	"github.com/acmetls/acmetls/storage"
)

// ErrTermsNotAgreed is returned when the CA has terms of service and
// [Manager.AgreeToTerms] is false. The error names the terms' URL.
var ErrTermsNotAgreed = errors.New("acmetls: the CA's terms of service must be agreed to (set Manager.AgreeToTerms)")

// getAccount returns the ACME account at the CA of is for the Manager's
// email: from memory, else from storage, else registered with the CA once
// for every process sharing the storage.
func (m *Manager) getAccount(ctx context.Context, is *issuer) (*acme.Account, error) {
	is.mu.RLock()
	a := is.account
	is.mu.RUnlock()
	if a != nil {
		return a, nil
	}
	a, err := m.accounts.Do(ctx, "account "+is.url, func(ctx context.Context) (*acme.Account, error) {
		return m.loadOrCreateAccount(ctx, is)
	})
	if err != nil {
		return nil, err
	}
	is.mu.Lock()
	is.account = a
	is.mu.Unlock()
	return a, nil
}

func (m *Manager) loadOrCreateAccount(ctx context.Context, is *issuer) (*acme.Account, error) {
	key := storage.AccountKey(is.url, m.Email)
	if a, err := m.loadAccount(ctx, key); err == nil || !errors.Is(err, fs.ErrNotExist) {
		return a, err
	}
	lock := storage.AccountLockName(is.url, m.Email)
	if err := m.store.Lock(ctx, lock); err != nil {
		return nil, fmt.Errorf("acmetls: locking account: %w", err)
	}
	defer m.unlock(lock)
	// Another process may have registered while we waited for the lock.
	if a, err := m.loadAccount(ctx, key); err == nil || !errors.Is(err, fs.ErrNotExist) {
		return a, err
	}
	return m.createAccount(ctx, is, key)
}

// loadAccount reads an account record. A missing one is fs.ErrNotExist.
func (m *Manager) loadAccount(ctx context.Context, key string) (*acme.Account, error) {
	b, err := m.store.Load(ctx, key)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, err
		}
		return nil, fmt.Errorf("acmetls: loading account %s: %w", key, err)
	}
	rec, err := storage.ParseAccountRecord(b)
	if err != nil {
		return nil, fmt.Errorf("acmetls: account %s: %w", key, err)
	}
	priv, err := decodeKey(rec.KeyPEM)
	if err != nil {
		return nil, fmt.Errorf("acmetls: account %s: %w", key, err)
	}
	return &acme.Account{
		Status:               acme.StatusValid,
		Contact:              rec.Contact,
		TermsOfServiceAgreed: rec.TermsOfService != "",
		Location:             rec.Location,
		PrivateKey:           priv,
	}, nil
}

// ErrExternalAccount is returned when the CA requires external account
// binding and none, or an unusable one, is configured.
var ErrExternalAccount = errors.New("acmetls: external account binding")

func (m *Manager) createAccount(ctx context.Context, is *issuer, key string) (*acme.Account, error) {
	dir, err := is.client.GetDirectory(ctx)
	if err != nil {
		return nil, fmt.Errorf("acmetls: reading the CA's directory %s: %w", is.url, err)
	}
	var terms string
	if dir.Meta != nil {
		terms = dir.Meta.TermsOfService
	}
	if terms != "" && !m.AgreeToTerms {
		return nil, fmt.Errorf("%w: %s", ErrTermsNotAgreed, terms)
	}
	priv, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	a := acme.Account{TermsOfServiceAgreed: m.AgreeToTerms, PrivateKey: priv}
	if m.Email != "" {
		a.Contact = []string{"mailto:" + m.Email}
	}
	switch eab := is.eab; {
	case eab != nil:
		if err := a.SetExternalAccountBinding(ctx, is.client, acme.EAB{KeyID: eab.KeyID, MACKey: eab.MACKey}); err != nil {
			return nil, fmt.Errorf("%w: binding the account to key ID %q: %v", ErrExternalAccount, eab.KeyID, err)
		}
	case dir.Meta != nil && dir.Meta.ExternalAccountRequired:
		return nil, fmt.Errorf("%w: %s requires it; set the CA's ExternalAccount (Manager.ExternalAccount or FallbackCA.ExternalAccount) to the key ID and HMAC key it gave", ErrExternalAccount, is.url)
	}
	a, err = is.client.NewAccount(ctx, a)
	if err != nil {
		return nil, fmt.Errorf("acmetls: registering account with %s: %w", is.url, err)
	}
	keyPEM, err := encodeKey(priv)
	if err != nil {
		return nil, err
	}
	rec := storage.AccountRecord{
		CA:             is.url,
		Contact:        a.Contact,
		Location:       a.Location,
		KeyPEM:         keyPEM,
		TermsOfService: terms,
		Created:        time.Now().UTC(),
	}
	b, err := rec.Marshal()
	if err != nil {
		return nil, err
	}
	if err := m.store.Store(ctx, key, b); err != nil {
		// The CA knows it now: use it from memory rather than register
		// another one per attempt.
		m.logger().Named("account").Error("storing the new ACME account; using it from memory",
			zap.String("ca", is.url), zap.String("account", a.Location), zapErr(err))
	}
	m.logger().Named("account").Info("registered ACME account",
		zap.String("ca", is.url), zap.String("account", a.Location))
	return &a, nil
}

// isAccountGone reports whether the CA answered that it does not know the
// account, or that it was deactivated: the CA's database was reset, or an
// operator deactivated it.
func isAccountGone(err error) bool {
	var p acme.Problem
	if !errors.As(err, &p) {
		return false
	}
	return p.Type == acme.ProblemTypeAccountDoesNotExist ||
		p.Type == acme.ProblemTypeUnauthorized && strings.Contains(strings.ToLower(p.Detail), "deactivated")
}

// recoverAccount replaces the account the CA no longer knows (gone, after
// the failure cause) with a new one, registered once for every process
// sharing the storage: under the account lock, the stored account is read
// again, and used if another process already replaced it. The event
// (EventAccountReplaced) names the name whose order found out.
func (m *Manager) recoverAccount(ctx context.Context, is *issuer, name string, gone *acme.Account, cause error) (*acme.Account, error) {
	a, err := m.accounts.Do(ctx, "recover "+gone.Location, func(ctx context.Context) (*acme.Account, error) {
		key := storage.AccountKey(is.url, m.Email)
		lock := storage.AccountLockName(is.url, m.Email)
		if err := m.store.Lock(ctx, lock); err != nil {
			return nil, fmt.Errorf("acmetls: locking account: %w", err)
		}
		defer m.unlock(lock)
		if a, err := m.loadAccount(ctx, key); err == nil && a.Location != gone.Location {
			return a, nil // another process registered it already
		}
		a, err := m.createAccount(ctx, is, key)
		if err == nil {
			m.emit(Event{Kind: EventAccountReplaced, ServerName: name, Err: cause})
		}
		return a, err
	})
	if err != nil {
		return nil, fmt.Errorf("acmetls: registering a new account after %v: %w", cause, err)
	}
	is.mu.Lock()
	if is.account == nil || is.account.Location == gone.Location {
		is.account = a
	}
	is.mu.Unlock()
	return a, nil
}
