// Tells the NHS.UK frontend CSS that its JavaScript runs (an inline script would break the CSP).
document.body.className += " js-enabled" + ("noModule" in HTMLScriptElement.prototype ? " nhsuk-frontend-supported" : "");
