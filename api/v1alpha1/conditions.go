package v1alpha1

// Condition types, in the kstatus conventions that GitOps engines and kubectl wait read
// (docs/gitops.md). internal/keystatus decides them all.
const (
	// ConditionReady is True when the key in the KMS is as the spec asks: enabled when asked
	// enabled, disabled when asked disabled, pending deletion when asked scheduled, pending
	// import while the spec gives no material. Whether the key can be used is status.phase.
	ConditionReady = "Ready"
	// ConditionReconciling is True while the operator moves the key toward the spec; absent
	// otherwise.
	ConditionReconciling = "Reconciling"
	// ConditionStalled is True, with the reason, when the spec cannot be reached until a
	// person changes something; absent otherwise.
	ConditionStalled = "Stalled"
	// ConditionSynced is True when the last reconcile reached the KMS without error.
	ConditionSynced = "Synced"
)

// Reasons of the Ready condition, and of Reconciling or Stalled when the key is not as the spec
// asks.
const (
	// ReasonAvailable: the key is enabled, as the spec asks (Ready=True).
	ReasonAvailable = "Available"
	// ReasonCreating: the key is being created in the KMS.
	ReasonCreating = "Creating"
	// ReasonProgressing: the key is moving toward the spec; another reconcile follows at once.
	ReasonProgressing = "Progressing"
	// ReasonKeyDisabled: the key is disabled, as the spec asks (Ready=True).
	ReasonKeyDisabled = "KeyDisabled"
	// ReasonPendingDeletion: the key is scheduled for deletion, as the spec asks (Ready=True).
	ReasonPendingDeletion = "PendingDeletion"
	// ReasonPendingImport: the key has no material and the spec gives none (Ready=True): it
	// cannot be enabled until material is imported.
	ReasonPendingImport = "PendingImport"
	// ReasonKeyDeleted: the KMS deleted the key; it is never recreated. Ready=True when the
	// spec asked for the deletion, else Stalled.
	ReasonKeyDeleted = "KeyDeleted"
	// ReasonNotCreated: no key is created while the spec asks for its deletion (Ready=True).
	ReasonNotCreated = "NotCreated"
	// ReasonKeyNotFound: spec.keyID names a key the KMS does not have.
	ReasonKeyNotFound = "KeyNotFound"
	// ReasonAdoptionRefused: spec.keyID names a key this resource may not adopt: another
	// live resource owns it, it belongs (or last belonged) to another namespace, or it was made
	// outside the operator and the namespace does not allow adopting such keys. Nothing is
	// recorded or done to the key; spec.keyID can still be corrected.
	ReasonAdoptionRefused = "AdoptionRefused"
	// ReasonKeyOwnedElsewhere: the KMS records another resource as the owner of the key in
	// status; nothing is done to the key from this resource.
	ReasonKeyOwnedElsewhere = "KeyOwnedElsewhere"
	// ReasonAliasInUse: the alias is held by another key; the message says whether it can be
	// adopted, else re-create the resource with another spec.alias.
	ReasonAliasInUse = "AliasInUse"
	// ReasonAliasReserved: spec.alias begins with k8s/<namespace>/ of another namespace, a
	// prefix reserved to that namespace's resources.
	ReasonAliasReserved = "AliasReserved"
	// ReasonKeyFrozen: the KMS has frozen the key (Huawei: the account is in arrears); nothing
	// is done to it until it thaws, and it is looked at again on the slow resync.
	ReasonKeyFrozen = "KeyFrozen"
	// ReasonKeyUnreadable: the KMS holds a record of the key that cannot be read; a person
	// must restore it (the message says where), or remove the finalizer to give the key up.
	ReasonKeyUnreadable = "KeyUnreadable"
	// ReasonSpecMismatch: the adopted key's keySpec, keyUsage or origin differ from the spec;
	// nothing is done to it until they match.
	ReasonSpecMismatch = "SpecMismatch"
	// ReasonDeletionProtected: the spec, or deletionPolicy Delete on a resource being
	// deleted, asks for the key's deletion while spec.deletionProtection is true; nothing is
	// scheduled, and a resource being deleted waits, until the protection is cleared.
	ReasonDeletionProtected = "DeletionProtected"
	// ReasonKeyInUse: the spec, or deleting a resource whose deletionPolicy is Delete, asks to
	// disable the key or schedule its deletion while something depends on it (status.usage);
	// nothing is done until the last consumer is gone, or kms.cmk.io/allow-while-in-use is "true".
	ReasonKeyInUse = "KeyInUse"
	// ReasonObserved: managementPolicy Observe: status follows the key in the KMS, and the
	// operator changes nothing (Ready=True).
	ReasonObserved = "Observed"
)

// Reasons of both conditions when key material cannot be imported. Each message says what to
// change; the import is tried again every half minute and whenever the spec changes.
const (
	// ReasonSecretNotFound: spec.keyMaterial.secretRef names a Secret that does not exist, or
	// lacks encryptedKeyMaterial or importToken. The two are one answer, so that the right to
	// edit a CustomerMasterKey does not tell which Secrets exist and what they hold.
	ReasonSecretNotFound = "KeyMaterialSecretNotFound"
	// ReasonImportTokenInvalid: the token expired, was superseded, or is another key's; fresh
	// import parameters are published, to wrap the material again.
	ReasonImportTokenInvalid = "ImportTokenInvalid"
	// ReasonMaterialInvalid: the material does not unwrap, or has the wrong length.
	ReasonMaterialInvalid = "KeyMaterialInvalid"
	// ReasonMaterialMismatch: the key had other material before; only that may be imported.
	ReasonMaterialMismatch = "KeyMaterialMismatch"
	// ReasonExpiryPassed: spec.keyMaterial.expiresAt is not in the future.
	ReasonExpiryPassed = "KeyMaterialExpiryPassed"
)

// Reasons of the Synced condition.
const (
	// ReasonReconcileSuccess: the last reconcile reached the KMS without error (Synced=True).
	ReasonReconcileSuccess = "ReconcileSuccess"
	// ReasonReconcileError: a KMS call failed; it is retried with backoff.
	ReasonReconcileError = "ReconcileError"
	// ReasonUnsupported: the configured KMS provider cannot serve this spec; nothing is retried
	// until the spec changes.
	ReasonUnsupported = "Unsupported"
	// ReasonKMSUnavailable: the KMS refuses the operator as a whole (its credentials, for
	// example); every key waits, and the KMS is tried again with backoff.
	ReasonKMSUnavailable = "KMSUnavailable"
	// ReasonRejected: the KMS refused the request for good (for example an alias already in use);
	// nothing is retried until the spec changes.
	ReasonRejected = "Rejected"
	// ReasonReconcilePaused: the resource carries kms.cmk.io/paused: "true"; the operator makes
	// no KMS call and changes nothing for it until the annotation is removed.
	ReasonReconcilePaused = "ReconcilePaused"
)

// PausedAnnotation set to "true" on a CustomerMasterKey stops the operator from touching it:
// no KMS call and no change, its deletion included, until the annotation is removed (or the
// CustomerMasterKey CRD itself is deleted: an uninstall never waits on a paused key).
const PausedAnnotation = "kms.cmk.io/paused"

// Key in use (docs/guardrails.md). UsesKeyAnnotation on an object of a kind the operator is
// told to watch (--usage-kinds) names the CustomerMasterKeys of its namespace it depends on,
// comma-separated. ProtectsAnnotation on a CustomerMasterKey says what it protects outside any
// object the operator can see (ProtectsAPIServerSecrets: the apiserver's Secret encryption).
// AllowWhileInUseAnnotation "true" lets a key in use be disabled or deleted all the same.
const (
	UsesKeyAnnotation         = "kms.cmk.io/uses-key"
	ProtectsAnnotation        = "kms.cmk.io/protects"
	ProtectsAPIServerSecrets  = "apiserver-secrets"
	AllowWhileInUseAnnotation = "kms.cmk.io/allow-while-in-use"
)

// Event reasons, one per kind of change the operator makes or sees.
const (
	EventCreated           = "Created"
	EventEnabled           = "Enabled"
	EventDisabled          = "Disabled"
	EventDeletionScheduled = "DeletionScheduled"
	EventDeletionCanceled  = "DeletionCanceled"
	EventMaterialImported  = "MaterialImported"
	EventImportParameters  = "ImportParametersIssued"
	EventImportFailed      = "ImportFailed"
	EventDeleted           = "Deleted"
	EventDriftDetected     = "DriftDetected"
	EventRotationEnabled   = "RotationEnabled"
	EventRotationDisabled  = "RotationDisabled"
	EventTagsChanged       = "TagsChanged"
	EventRetained          = "Retained"
	EventAdopted           = "Adopted"
	// EventReclaimed: a resource created again with a retained key's namespace and name took
	// the key back.
	EventReclaimed = "KeyReclaimed"
	EventFailed    = "Failed"
	// EventOrphanDeletionScheduled: the orphan sweep scheduled the deletion of a key whose
	// resource is gone, as the deletionPolicy recorded with the key asks. The event is about
	// the resource that is gone, in its namespace.
	EventOrphanDeletionScheduled = "OrphanDeletionScheduled"
)
