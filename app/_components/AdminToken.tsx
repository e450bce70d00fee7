'use client';
// Where the browser keeps the admin token, for dashboards that protect writes with FLASHLAB_ADMIN_TOKEN.
import { useEffect, useState } from 'react';
import { ADMIN_TOKEN_KEY } from '../_trpc/client';

export function AdminToken() {
  const [open, setOpen] = useState(false);
  const [value, setValue] = useState('');
  const [saved, setSaved] = useState(false);
  useEffect(() => {
    const t = window.localStorage.getItem(ADMIN_TOKEN_KEY) ?? '';
    setValue(t);
    setSaved(t !== '');
  }, []);
  if (!open)
    return (
      <button type="button" className="link" style={{ color: '#cfd6e4' }} onClick={() => setOpen(true)}>
        {saved ? 'Admin token set' : 'Admin token'}
      </button>
    );
  return (
    <form
      className="row"
      onSubmit={(e) => {
        e.preventDefault();
        if (value.trim()) window.localStorage.setItem(ADMIN_TOKEN_KEY, value.trim());
        else window.localStorage.removeItem(ADMIN_TOKEN_KEY);
        setSaved(value.trim() !== '');
        setOpen(false);
      }}
    >
      <label className="sr-only" htmlFor="admin-token">
        Admin token
      </label>
      <input
        id="admin-token"
        type="password"
        placeholder="only if the dashboard requires one"
        value={value}
        onChange={(e) => setValue(e.target.value)}
        autoComplete="off"
      />
      <button type="submit">Save</button>
    </form>
  );
}
