import type { ComponentChildren, JSX } from "preact";
import { useEffect, useId, useRef, useState } from "preact/hooks";
import { onLinkClick } from "../router";
import { errorText } from "../api";

export function Link(props: JSX.HTMLAttributes<HTMLAnchorElement> & { href: string }) {
  return <a {...props} onClick={onLinkClick} />;
}

export function ErrorBox({ error, title }: { error: string | null; title?: string }) {
  if (!error) return null;
  return (
    <div class="error" role="alert">
      {title && <strong>{title} </strong>}
      {error}
    </div>
  );
}

export function Notice({ children }: { children: ComponentChildren }) {
  return (
    <div class="notice" role="status">
      {children}
    </div>
  );
}

export function Loading({ what }: { what: string }) {
  return (
    <p class="loading" role="status">
      <span class="spinner" aria-hidden="true" />
      Loading {what}…
    </p>
  );
}

export function Empty({ title, children }: { title: string; children?: ComponentChildren }) {
  return (
    <div class="empty">
      <p class="empty-title">{title}</p>
      {children}
    </div>
  );
}

/**
 * A native modal <dialog>: opened with showModal() when mounted, so focus moves into it and the
 * page behind is inert; Escape or the Close button call onClose, and focus returns to what had
 * it before.
 */
export function Modal({
  title,
  onClose,
  children,
  wide,
}: {
  title: string;
  onClose: () => void;
  children: ComponentChildren;
  wide?: boolean;
}) {
  const ref = useRef<HTMLDialogElement>(null);
  const id = useId();
  useEffect(() => {
    const d = ref.current!;
    const opener = document.activeElement as HTMLElement | null;
    if (!d.open) d.showModal();
    return () => {
      if (d.open) d.close();
      if (opener && opener.isConnected) opener.focus();
    };
  }, []);
  return (
    <dialog
      ref={ref}
      class={wide ? "wide" : undefined}
      aria-labelledby={id}
      onCancel={(e) => {
        e.preventDefault();
        onClose();
      }}
    >
      <div class="dialog-head">
        <h2 id={id}>{title}</h2>
        <button type="button" class="icon" aria-label="Close" onClick={onClose}>
          ×
        </button>
      </div>
      {children}
    </dialog>
  );
}

/** A confirmation step in a modal dialog; the Confirm button runs the action. */
export function Confirm({
  title,
  children,
  confirmLabel,
  danger,
  onConfirm,
  onClose,
}: {
  title: string;
  children: ComponentChildren;
  confirmLabel: string;
  danger?: boolean;
  onConfirm: () => Promise<void> | void;
  onClose: () => void;
}) {
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<string | null>(null);
  return (
    <Modal title={title} onClose={onClose}>
      <div class="dialog-body">{children}</div>
      <ErrorBox error={error} />
      <div class="actions">
        <button type="button" onClick={onClose} autofocus>
          Cancel
        </button>
        <button
          type="button"
          class={danger ? "danger" : "primary"}
          disabled={busy}
          onClick={async () => {
            setBusy(true);
            setError(null);
            try {
              await onConfirm();
            } catch (e) {
              setError(errorText(e));
              setBusy(false);
            }
          }}
        >
          {busy ? "Working…" : confirmLabel}
        </button>
      </div>
    </Modal>
  );
}

/**
 * A secret shown once, with a Copy button. The secret lives only in the owner's state: when the
 * dialog closes, the owner drops it.
 */
export function SecretBox({
  secret,
  label,
  warning,
  focusCopy,
}: {
  secret: string;
  label: string;
  warning: string;
  focusCopy?: boolean;
}) {
  const [copied, setCopied] = useState<string | null>(null);
  const btn = useRef<HTMLButtonElement>(null);
  const id = useId();
  useEffect(() => {
    if (focusCopy) btn.current?.focus();
  }, []);
  return (
    <div class="secret">
      <p class="warning" role="alert">
        <strong>Copy it now. </strong>
        {warning}
      </p>
      <label for={id}>{label}</label>
      <div class="secret-row">
        <output id={id} class="secret-value" data-secret>
          {secret}
        </output>
        <button
          ref={btn}
          type="button"
          class="primary"
          onClick={async () => {
            try {
              await navigator.clipboard.writeText(secret);
              setCopied("Copied to the clipboard.");
            } catch (e) {
              setCopied(`Could not copy: ${e instanceof Error ? e.message : String(e)}. Select the text and copy it by hand.`);
            }
          }}
        >
          Copy
        </button>
      </div>
      <p class="hint" role="status">
        {copied ?? ""}
      </p>
    </div>
  );
}

export function StatusBadge({ status }: { status: string }) {
  return <span class={`badge badge-${status}`}>{status}</span>;
}
