package storage

import (
	"encoding/json"
	"errors"
	"fmt"
	"time"
)

// RecordVersion is the version of the records this package writes.
const RecordVersion = 1

// ErrCorruptRecord is wrapped by the errors of Parse functions when a stored
// record cannot be used. A corrupt record is reported and replaced, never
// served.
var ErrCorruptRecord = errors.New("acmetls/storage: corrupt record")

// CertRecord is one certificate with its private key and metadata, stored
// in a single value at [CertKey] so a reader never sees the key of one
// issuance next to the chain of another.
type CertRecord struct {
	Version  int      `json:"version"`
	Names    []string `json:"names"`
	KeyType  string   `json:"key_type"`
	KeyPEM   string   `json:"key_pem"`   // PKCS #8 private key
	ChainPEM string   `json:"chain_pem"` // leaf first, as the CA sent it
	CA       string   `json:"ca,omitempty"`
	URL      string   `json:"url,omitempty"`     // certificate URL at the CA
	Account  string   `json:"account,omitempty"` // account URL that ordered it
	// Obtained is when this process wrote the record.
	Obtained time.Time `json:"obtained"`
	// RenewalInfo is the CA's last ACME Renewal Information answer, as JSON.
	RenewalInfo json.RawMessage `json:"renewal_info,omitempty"`
}

// Marshal encodes r, setting its version.
func (r *CertRecord) Marshal() ([]byte, error) {
	r.Version = RecordVersion
	return json.Marshal(r)
}

// ParseCertRecord decodes a record written by [CertRecord.Marshal]. It checks
// the shape of the record, not the cryptography: the caller still has to
// check that the key matches the leaf. Errors wrap [ErrCorruptRecord].
func ParseCertRecord(b []byte) (*CertRecord, error) {
	var r CertRecord
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrCorruptRecord, err)
	}
	switch {
	case r.Version != RecordVersion:
		return nil, fmt.Errorf("%w: version %d, want %d", ErrCorruptRecord, r.Version, RecordVersion)
	case len(r.Names) == 0:
		return nil, fmt.Errorf("%w: no names", ErrCorruptRecord)
	case r.KeyType == "":
		return nil, fmt.Errorf("%w: no key type", ErrCorruptRecord)
	case r.KeyPEM == "" || r.ChainPEM == "":
		return nil, fmt.Errorf("%w: missing key or chain", ErrCorruptRecord)
	}
	return &r, nil
}

// AccountRecord is an ACME account: its key, and what the CA said of it.
type AccountRecord struct {
	Version  int      `json:"version"`
	CA       string   `json:"ca"`
	Contact  []string `json:"contact,omitempty"`
	Location string   `json:"location"` // account URL
	KeyPEM   string   `json:"key_pem"`  // PKCS #8 private key
	// TermsOfService is the terms URL agreed to, from the CA's directory.
	TermsOfService string    `json:"terms_of_service,omitempty"`
	Created        time.Time `json:"created"`
}

// Marshal encodes r, setting its version.
func (r *AccountRecord) Marshal() ([]byte, error) {
	r.Version = RecordVersion
	return json.Marshal(r)
}

// ParseAccountRecord decodes a record written by [AccountRecord.Marshal].
// Errors wrap [ErrCorruptRecord].
func ParseAccountRecord(b []byte) (*AccountRecord, error) {
	var r AccountRecord
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrCorruptRecord, err)
	}
	switch {
	case r.Version != RecordVersion:
		return nil, fmt.Errorf("%w: version %d, want %d", ErrCorruptRecord, r.Version, RecordVersion)
	case r.Location == "" || r.KeyPEM == "":
		return nil, fmt.Errorf("%w: account without location or key", ErrCorruptRecord)
	}
	return &r, nil
}

// ChallengeRecord is the answer to one challenge, shared through storage so
// that whichever process the CA reaches can answer.
type ChallengeRecord struct {
	Type             string `json:"type"` // "http-01" or "tls-alpn-01"
	Identifier       string `json:"identifier"`
	Token            string `json:"token"`
	KeyAuthorization string `json:"key_authorization"`
}

// ParseChallengeRecord decodes a challenge record. Errors wrap
// [ErrCorruptRecord].
func ParseChallengeRecord(b []byte) (*ChallengeRecord, error) {
	var r ChallengeRecord
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrCorruptRecord, err)
	}
	if r.Token == "" || r.KeyAuthorization == "" {
		return nil, fmt.Errorf("%w: challenge without token or key authorization", ErrCorruptRecord)
	}
	return &r, nil
}
