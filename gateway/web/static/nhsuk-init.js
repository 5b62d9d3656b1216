// The NHS.UK frontend's components (header menu, buttons, error summary, skip link).
import { initAll } from "./nhsuk/nhsuk-frontend.min.js";

initAll();
